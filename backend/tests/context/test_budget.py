import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.config import Settings
from app.context.budget import allocate, plan_window
from app.context.elements import Layer
from app.errors import ContextLengthExceeded

LAYERS = list(Layer)


def test_defaults_scale_to_the_embedded_models_window():
    window = plan_window(Settings().context, n_ctx=8192, max_tokens=512, cap=None)
    assert window.total == 8192
    # 2000 / 13000 / 5000 / 10000 of 32000, buffer 2000, scaled by 8192 / 32000
    assert window.shares == {
        Layer.system: 512, Layer.recent_story: 3328, Layer.characters: 1280,
        Layer.plot_world: 2560,
    }
    assert window.buffer == 512


def test_request_cap_and_context_max_bound_the_window():
    assert plan_window(Settings().context, n_ctx=8192, max_tokens=100, cap=2000).total == 2000
    small = Settings(context_max_tokens=4000, context_buffer_tokens=100,
                     context_system_tokens=100, context_recent_story_tokens=100,
                     context_characters_tokens=100, context_plot_world_tokens=100).context
    assert plan_window(small, n_ctx=8192, max_tokens=100, cap=None).total == 4000


def test_max_tokens_larger_than_window_is_refused_with_numbers():
    with pytest.raises(ContextLengthExceeded) as caught:
        plan_window(Settings().context, n_ctx=8192, max_tokens=8000, cap=None)
    assert caught.value.details["available_tokens"] == 8192


def test_surplus_flows_to_the_layer_that_needs_it():
    shares = {Layer.system: 100, Layer.recent_story: 600, Layer.characters: 100,
              Layer.plot_world: 200}
    wanted = {Layer.system: 10, Layer.recent_story: 2000, Layer.characters: 10,
              Layer.plot_world: 0}
    budget = allocate(1000, shares, {}, wanted)
    assert budget[Layer.system] == 10 and budget[Layer.characters] == 10
    assert budget[Layer.recent_story] == 980


@given(
    capacity=st.integers(0, 5000),
    shares=st.lists(st.integers(0, 3000), min_size=4, max_size=4),
    wanted=st.lists(st.integers(0, 4000), min_size=4, max_size=4),
    required_fraction=st.lists(st.floats(0, 1), min_size=4, max_size=4),
)
def test_allocation_invariants(capacity, shares, wanted, required_fraction):
    share = dict(zip(LAYERS, shares, strict=True))
    want = dict(zip(LAYERS, wanted, strict=True))
    required = {layer: int(want[layer] * f)
                for layer, f in zip(LAYERS, required_fraction, strict=True)}
    if sum(required.values()) > capacity:
        with pytest.raises(ValueError):
            allocate(capacity, share, required, want)
        return
    budget = allocate(capacity, share, required, want)
    assert sum(budget.values()) <= capacity
    for layer in LAYERS:
        assert required[layer] <= budget[layer] <= max(want[layer], required[layer])
    # no capacity is left idle while a layer still wants more
    if sum(budget.values()) < capacity:
        assert all(budget[layer] >= want[layer] for layer in LAYERS)
