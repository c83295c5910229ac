import pytest

from prunelab.schedules import Iterative, OneShot, Polynomial


@pytest.mark.parametrize("schedule, step, expected", [
    (OneShot(0.8), 0, 0.8),
    (OneShot(0.8), 7, 0.8),
    (OneShot(0.5, step=3), 2, 0.0),
    (OneShot(0.5, step=3), 3, 0.5),
    (Iterative(0.8, 4), 0, 0.0),
    (Iterative(0.8, 4), 1, 0.2),
    (Iterative(0.8, 4), 4, 0.8),
    (Iterative(0.8, 4), 9, 0.8),
    (Iterative(0.75, 2, geometric=True), 1, 0.5),
    (Iterative(0.75, 2, geometric=True), 2, 0.75),
    (Polynomial(0.9, begin=10, end=110), 0, 0.0),
    (Polynomial(0.9, begin=10, end=110), 10, 0.0),
    (Polynomial(0.9, begin=10, end=110), 60, 0.9 - 0.9 * 0.5 ** 3),
    (Polynomial(0.9, begin=10, end=110), 110, 0.9),
    (Polynomial(0.9, begin=10, end=110), 500, 0.9),
    (Polynomial(0.9, begin=0, end=100, frequency=30), 59, 0.9 - 0.9 * 0.7 ** 3),
    (Polynomial(0.9, begin=0, end=100, initial=0.5, power=1), 50, 0.7),
])
def test_sparsity_at(schedule, step, expected):
    assert schedule.sparsity_at(step) == pytest.approx(expected, abs=1e-12)


def test_polynomial_is_monotone():
    s = Polynomial(0.95, begin=0, end=1000, frequency=10)
    values = [s.sparsity_at(t) for t in range(0, 1200, 7)]
    assert values == sorted(values)


@pytest.mark.parametrize("make, match", [
    (lambda: OneShot(1.2), "sparsity=1.2"),
    (lambda: Iterative(0.5, 0), "rounds=0"),
    (lambda: Polynomial(0.5, begin=10, end=10), "end=10"),
    (lambda: OneShot(0.5).sparsity_at(-1), "step=-1"),
])
def test_bad_schedules(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("begin", [0, 3, 10])
@pytest.mark.parametrize("length", [1, 2, 7, 30, 99, 100])
@pytest.mark.parametrize("frequency", [1, 2, 3, 7, 30, 64, 200])
def test_polynomial_reaches_target_exactly_at_end(begin, length, frequency):
    """Zhu & Gupta reach s_f at t0 + n*dt: the final sparsity at ``end``, whatever the frequency."""
    end = begin + length
    s = Polynomial(0.9, begin=begin, end=end, initial=0.1, frequency=frequency)
    values = [s.sparsity_at(t) for t in range(end + 2 * frequency + 1)]
    assert values[end] == 0.9 and values[end - 1] < 0.9
    assert values == sorted(values)
    assert values[:begin + 1] == [0.1] * (begin + 1)
    if length % frequency == 0:  # the interval divides: the update steps are Zhu & Gupta's, as before
        assert values[begin + frequency:end + 1:frequency] == [0.9 + (0.1 - 0.9) * (1 - k * frequency / length) ** 3
                                                               for k in range(1, length // frequency + 1)]
