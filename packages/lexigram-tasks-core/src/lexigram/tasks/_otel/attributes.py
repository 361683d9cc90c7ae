"""OpenTelemetry attribute names (messaging semantic conventions, plus ours).

opentelemetry-python keeps the messaging names in a private, incubating
module; these constants keep the runtime dependency to opentelemetry-api.
"""

MESSAGING_SYSTEM = "messaging.system"
MESSAGING_OPERATION_NAME = "messaging.operation.name"
MESSAGING_OPERATION_TYPE = "messaging.operation.type"
MESSAGING_DESTINATION_NAME = "messaging.destination.name"
MESSAGING_MESSAGE_ID = "messaging.message.id"
MESSAGING_CLIENT_ID = "messaging.client.id"
MESSAGING_BATCH_MESSAGE_COUNT = "messaging.batch.message_count"
ERROR_TYPE = "error.type"

TASK_NAME = "lexigram.task.name"
TASK_ATTEMPT = "lexigram.task.attempt"
TASK_MAX_RETRIES = "lexigram.task.max_retries"
TASK_DELAY_S = "lexigram.task.delay_s"
TASK_WILL_RETRY = "lexigram.task.will_retry"
TASK_OUTCOME = "lexigram.task.outcome"
RETRY_DELAY_S = "lexigram.retry.delay_s"
RETRY_REASON = "lexigram.retry.reason"
DLQ_REASON = "lexigram.dlq.reason"
