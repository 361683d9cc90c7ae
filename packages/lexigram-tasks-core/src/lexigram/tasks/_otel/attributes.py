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
WORKER_COUNT = "lexigram.worker.count"
PROGRESS_FRACTION = "lexigram.progress.fraction"
PROGRESS_MESSAGE = "lexigram.progress.message"

# Metric names (instruments of the "lexigram.tasks" meter).
METRIC_ENQUEUED = "lexigram.tasks.jobs.enqueued"
METRIC_COMPLETED = "lexigram.tasks.jobs.completed"
METRIC_RETRIED = "lexigram.tasks.jobs.retried"
METRIC_FAILED = "lexigram.tasks.jobs.failed"
METRIC_CANCELLED = "lexigram.tasks.jobs.cancelled"
METRIC_IN_FLIGHT = "lexigram.tasks.jobs.in_flight"
METRIC_DURATION = "lexigram.tasks.job.duration"
METRIC_QUEUE_WAIT = "lexigram.tasks.job.queue_wait"
