"""Each view saves an order and enqueues its receipt, tied to the same transaction."""

from asgiref.sync import sync_to_async
from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET, require_POST

from lexigram.tasks.integrations.django import enqueue_in_transaction, enqueue_on_commit
from shop.models import Order
from shop.tasks import send_receipt


class PaymentDeclined(Exception):
    pass


@require_POST
def place_order(request: HttpRequest) -> JsonResponse:
    """PostgreSQL: the job row is written in the order's transaction."""
    try:
        with transaction.atomic():
            order = Order.objects.create(email=request.POST["email"])
            job = enqueue_in_transaction(send_receipt, order.pk)
            _charge(request)
    except PaymentDeclined:
        return JsonResponse({"error": "payment declined"}, status=402)
    return JsonResponse({"order": order.pk, "job": job.id}, status=201)


@require_POST
def place_order_on_commit(request: HttpRequest) -> JsonResponse:
    """Any backend: the job is sent once the transaction has committed."""
    try:
        order = _create_and_send_on_commit(request.POST["email"], request.POST.get("card", ""))
    except PaymentDeclined:
        return JsonResponse({"error": "payment declined"}, status=402)
    return JsonResponse({"order": order.pk}, status=201)


@require_POST
async def place_order_async(request: HttpRequest) -> JsonResponse:
    """An async view: the transaction runs in sync code, through sync_to_async."""
    create = sync_to_async(_create_and_send_on_commit)
    try:
        order = await create(request.POST["email"], request.POST.get("card", ""))
    except PaymentDeclined:
        return JsonResponse({"error": "payment declined"}, status=402)
    return JsonResponse({"order": order.pk}, status=201)


@require_GET
def order_status(request: HttpRequest, order_id: int) -> JsonResponse:
    order = Order.objects.get(pk=order_id)
    return JsonResponse({"order": order.pk, "receipt_sent": order.receipt_sent})


def _create_and_send_on_commit(email: str, card: str) -> Order:
    with transaction.atomic():
        order = Order.objects.create(email=email)
        enqueue_on_commit(send_receipt, order.pk)
        if card == "declined":
            raise PaymentDeclined
    return order


def _charge(request: HttpRequest) -> None:
    if request.POST.get("card") == "declined":
        raise PaymentDeclined
