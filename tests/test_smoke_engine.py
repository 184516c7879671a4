"""A first end-to-end check of the engine against real redis-server; the full suite lives in tests/engine/."""

from engine import AsyncEngine, Engine, OutOfStock, SaleSettings


def test_reserve_then_sold_out(engine: Engine) -> None:
    engine.load_sale(SaleSettings(sku="SKU-1", total=1))
    engine.reserve("SKU-1", "alice")
    try:
        engine.reserve("SKU-1", "bob")
    except OutOfStock:
        pass
    else:
        raise AssertionError("the second reservation of the only unit must be refused")
    sale = engine.get_sale("SKU-1")
    assert (sale.available, sale.reserved, sale.sold) == (0, 1, 0)


async def test_async_client_reserves(async_engine: AsyncEngine) -> None:
    await async_engine.load_sale(SaleSettings(sku="SKU-2", total=5))
    reservation = await async_engine.reserve("SKU-2", "carol")
    assert reservation.sku == "SKU-2"
    assert (await async_engine.get_sale("SKU-2")).available == 4
