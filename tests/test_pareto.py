from exporter.policy.pareto import pareto_front


def test_front_drops_dominated_points_and_orders_by_cost():
    pts = [("big", 10.0, 0.95), ("mid", 5.0, 0.93), ("bad", 6.0, 0.90), ("small", 2.0, 0.80),
           ("tie", 5.0, 0.93)]
    assert pareto_front(pts) == ["small", "mid", "big"]


def test_equal_cost_keeps_the_more_accurate():
    assert pareto_front([("a", 1.0, 0.5), ("b", 1.0, 0.6)]) == ["b"]
