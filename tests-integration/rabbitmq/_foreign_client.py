"""A producer and a consumer of lexigram jobs written with aio-pika alone (not a test module).

It stands for a service in another language: it knows the documented JSON
job format (docs/job-format.md) and the AMQP conventions of
docs/backends/rabbitmq.md, and imports nothing from lexigram.

    python _foreign_client.py produce AMQP_URL QUEUE TRACEPARENT ARG...
        publishes one job per ARG for the task "interop.greet"; prints the ids
    python _foreign_client.py consume AMQP_URL QUEUE COUNT
        takes COUNT jobs, acks each, prints each as one JSON line
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid

import aio_pika


async def produce(url: str, queue: str, traceparent: str, args: list[str]) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        for arg in args:
            job_id = uuid.uuid4().hex
            document = {
                "v": 1,
                "id": job_id,
                "task": "interop.greet",
                "args": [arg],
                "kwargs": {"punctuation": "!"},
                "queue": queue,
                "enqueued_at": time.time(),
                "producer": "foreign-client/1.0",
            }
            message = aio_pika.Message(
                json.dumps(document).encode(),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=job_id,
                # Trace context only in the AMQP headers, as an OTel AMQP
                # instrumentation of another language would put it.
                headers={"traceparent": traceparent},
            )
            await channel.default_exchange.publish(message, routing_key=queue, mandatory=True)
            print(job_id, flush=True)


async def consume(url: str, queue: str, count: int) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=count)
        declared = await channel.get_queue(queue, ensure=True)
        async with declared.iterator() as messages:
            taken = 0
            async for message in messages:
                document = json.loads(message.body)
                print(
                    json.dumps(
                        {
                            "content_type": message.content_type,
                            "message_id": message.message_id,
                            "type": message.type,
                            "priority": message.priority,
                            "amqp_traceparent": (message.headers or {}).get("traceparent"),
                            "job": document,
                        }
                    ),
                    flush=True,
                )
                await message.ack()
                taken += 1
                if taken == count:
                    break


def main() -> None:
    command, url, queue, *rest = sys.argv[1:]
    if command == "produce":
        asyncio.run(produce(url, queue, rest[0], rest[1:]))
    else:
        asyncio.run(consume(url, queue, int(rest[0])))
    loaded = sorted(name for name in sys.modules if name.split(".")[0] == "lexigram")
    assert not loaded, f"the foreign client imported {loaded}"


if __name__ == "__main__":
    main()
