"""The shop's tasks, on the provider its settings describe."""

from django.conf import settings

from lexigram.tasks import TaskProvider

provider = TaskProvider.from_config(settings.LEXIGRAM_TASKS)


@provider.task(name="shop.send_receipt", max_retries=3)
def send_receipt(order_id: int) -> str:
    """Runs in the worker, in a thread: the ORM is usable as in any sync code."""
    from shop.models import Order

    order = Order.objects.get(pk=order_id)
    # ... send the e-mail to order.email here ...
    Order.objects.filter(pk=order_id).update(receipt_sent=True)
    return f"receipt for order {order.pk} sent to {order.email}"
