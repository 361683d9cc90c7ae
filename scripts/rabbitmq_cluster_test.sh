#!/usr/bin/env bash
# The RabbitMQ cluster failover tests (tests-integration/rabbitmq/cluster):
# three local RabbitMQ nodes on ports 5681-5683 (distribution 25681-25683),
# started and stopped by the tests. Not part of the default suite: about a
# minute on two cores. Needs the rabbitmq-server package (its scripts in
# /usr/lib/rabbitmq/bin, or RABBITMQ_SBIN) and epmd; the broker on 5672 is
# never touched. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
LEXIGRAM_TEST_RABBITMQ_CLUSTER=1 exec "$PYTHON" -m pytest -p no:cacheprovider -s \
  --durations=5 tests-integration/rabbitmq/cluster "$@"
