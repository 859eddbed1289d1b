"""Layered token budgets: scaling the configured shares to the window and sharing out surplus.

The configured layer budgets (defaults 2000 / 13000 / 5000 / 10000 of a 32000 total less a 2000
buffer) are shares. For a request they are scaled to the effective window (the smaller of
``CONTEXT_MAX_TOKENS``, the model's ``n_ctx`` and the request's cap), and what one layer does not
need flows to layers that overflow, in proportion to their shares (water-filling), after every
layer has room for its high-priority content.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from app.config import ContextSettings
from app.context.elements import Layer
from app.errors import ContextLengthExceeded


@dataclass(frozen=True)
class Window:
    """Token figures of one request's window.

    ``total``: the effective window (tokens). ``buffer``: the safety margin kept free, scaled
    from ``CONTEXT_BUFFER_TOKENS``. ``max_tokens``: completion tokens reserved. ``shares``: the
    configured layer budgets scaled to ``total``.
    """

    total: int
    buffer: int
    max_tokens: int
    shares: dict[Layer, int]


def plan_window(context: ContextSettings, n_ctx: int, max_tokens: int, cap: int | None) -> Window:
    """Scale the configured budgets to the effective window.

    Raises:
        ContextLengthExceeded: ``max_tokens`` alone does not fit the window.
    """
    total = min(context.max_tokens, n_ctx, cap or n_ctx)
    scale = total / context.max_tokens
    buffer = int(context.buffer_tokens * scale)
    if max_tokens + buffer >= total:
        raise ContextLengthExceeded(
            f"max_tokens ({max_tokens}) plus the {buffer}-token buffer leaves no room for a "
            f"prompt in a {total}-token context window; lower max_tokens.",
            param="max_tokens",
            needed_tokens=max_tokens + buffer + 1,
            available_tokens=total,
        )
    layers = context.layers
    configured = {Layer.system: layers.system, Layer.recent_story: layers.recent_story,
                  Layer.characters: layers.characters, Layer.plot_world: layers.plot_world}
    shares = {layer: int(tokens * scale) for layer, tokens in configured.items()}
    return Window(total=total, buffer=buffer, max_tokens=max_tokens, shares=shares)


def allocate(
    capacity: int,
    shares: Mapping[Layer, int],
    required: Mapping[Layer, int],
    wanted: Mapping[Layer, int],
) -> dict[Layer, int]:
    """Share ``capacity`` tokens among layers.

    Args:
        capacity: tokens available to all layers together.
        shares: each layer's nominal budget (its weight when surplus is shared).
        required: tokens a layer must get (its high-priority content).
        wanted: tokens a layer could use (all of its content); at least ``required``.

    Returns:
        Budget per layer: at least ``required``, at most ``wanted``; the sum is at most
        ``capacity``. Layers first get their share (capped by what they want), scaled down
        together if the shares exceed the capacity; what is left then flows to layers that
        still want more, in proportion to their shares.

    Raises:
        ValueError: the required tokens exceed ``capacity`` (the caller checks this first and
            reports it with the numbers).
    """
    layers = list(shares)
    need = sum(required.get(layer, 0) for layer in layers)
    if need > capacity:
        raise ValueError(f"required {need} tokens exceed capacity {capacity}")
    budget = {layer: required.get(layer, 0) for layer in layers}
    room = capacity - need

    # First round: each layer up to its own share.
    first = {
        layer: max(0, min(wanted.get(layer, 0), shares[layer]) - budget[layer]) for layer in layers
    }
    asked = sum(first.values())
    if asked > room:
        scale = room / asked
        first = {layer: int(extra * scale) for layer, extra in first.items()}
    for layer in layers:
        budget[layer] += first[layer]
    room = capacity - sum(budget.values())

    # Water-filling: surplus to layers that still want more, weighted by share.
    while room > 0:
        hungry = [layer for layer in layers if budget[layer] < wanted.get(layer, 0)]
        if not hungry:
            break
        weights = {layer: max(shares[layer], 1) for layer in hungry}
        weight_sum = sum(weights.values())
        given = 0
        for layer in hungry:
            portion = max(1, room * weights[layer] // weight_sum)
            grant = min(portion, wanted[layer] - budget[layer], room - given)
            budget[layer] += grant
            given += grant
            if given >= room:
                break
        room -= given
        if given == 0:
            break
    return budget
