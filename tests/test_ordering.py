import torch
from test_boundaries import square_flow

from dynocc_data.generation.boundaries import (
    BoundaryConfig,
    detect_boundaries,
    truncated_distance,
)
from dynocc_data.generation.ordering import (
    OrderConfig,
    landing_votes,
    order_boundaries,
    pool_votes,
)

CFG = BoundaryConfig(min_length=8)


def two_way(left, fg, bg, top=20, size=20, H=64, W=80):
    """Flows of a frame where the square at ``left`` moves by fg (dx, dy) per gap and the background by bg."""
    def flow(sign):
        f = square_flow(H, W, top, left, size, motion=(sign * (fg[0] - bg[0]), sign * (fg[1] - bg[1])))
        return f + sign * torch.tensor(bg, dtype=torch.float32).view(1, 2, 1, 1)
    return flow(1), flow(-1)


def order_square(fg, bg, left=30):
    """Order the boundaries of frame t of a square moving fg over a background moving bg (per gap)."""
    fn, fp = two_way(left, fg, bg)
    nxt_n, nxt_p = two_way(left + round(fg[0]), fg, bg)
    prv_n, prv_p = two_way(left - round(fg[0]), fg, bg)
    bnd = detect_boundaries(fn, fp, CFG)
    d_next = truncated_distance(detect_boundaries(nxt_n, nxt_p, CFG).mask(), 6)
    d_prev = truncated_distance(detect_boundaries(prv_n, prv_p, CFG).mask(), 6)
    return bnd, order_boundaries(bnd, [fn, fp], [d_next, d_prev], OrderConfig())


def front_is_square(ob, left=30, top=20, size=20, d=4):
    fy = (ob.y + d * ob.normal[:, 0]).round().long()
    fx = (ob.x + d * ob.normal[:, 1]).round().long()
    by = (ob.y - d * ob.normal[:, 0]).round().long()
    bx = (ob.x - d * ob.normal[:, 1]).round().long()

    def inside(y, x):
        return (x >= left) & (x < left + size) & (y >= top) & (y < top + size)

    return inside(fy, fx) & ~inside(by, bx)


def test_moving_square_is_in_front():
    bnd, ob = order_square(fg=(3.0, 0.0), bg=(0.0, 0.0))
    assert len(ob) >= 0.8 * len(bnd) > 0
    assert front_is_square(ob).all()
    assert (ob.confidence > 0.9).all()


def test_static_occluder_over_moving_background_is_in_front():
    # the square does not move, the background slides under it: the boundary stays with the square
    bnd, ob = order_square(fg=(0.0, 0.0), bg=(3.0, 0.0))
    assert len(ob) > 0 and front_is_square(ob).all()


def test_no_votes_without_neighbour_boundaries():
    fn, fp = two_way(30, (3.0, 0.0), (0.0, 0.0))
    bnd = detect_boundaries(fn, fp, CFG)
    empty = truncated_distance(torch.zeros(1, 64, 80, dtype=torch.bool), 6)
    ob = order_boundaries(bnd, [fn, fp], [empty, empty], OrderConfig())
    assert len(ob) == 0


def test_landing_vote_sign_follows_normal():
    fn, fp = two_way(30, (3.0, 0.0), (0.0, 0.0))
    bnd = detect_boundaries(fn, fp, CFG)
    nxt = truncated_distance(detect_boundaries(*two_way(33, (3.0, 0.0), (0.0, 0.0)), CFG).mask(), 6)
    vote, rel = landing_votes(bnd, fn, nxt, OrderConfig())
    left = bnd.x < 40  # trailing edge, found on the flow to the next frame
    # + side is where the normal points; it is the square iff the normal points right (into the square)
    plus_is_square = bnd.normal[:, 1] > 0
    v = vote[left]
    assert ((v > 0) == plus_is_square[left]).all()
    # flipping a normal flips its vote and its relative motion
    bnd.normal = -bnd.normal
    vote2, rel2 = landing_votes(bnd, fn, nxt, OrderConfig())
    assert torch.allclose(vote2, -vote) and torch.allclose(rel2, -rel)


def test_pool_votes_is_invariant_to_normal_signs():
    fn, fp = two_way(30, (3.0, 0.0), (0.0, 0.0))
    bnd = detect_boundaries(fn, fp, CFG)
    nxt = truncated_distance(detect_boundaries(*two_way(33, (3.0, 0.0), (0.0, 0.0)), CFG).mask(), 6)
    vote, rel = landing_votes(bnd, fn, nxt, OrderConfig())
    score, mass = pool_votes(bnd, vote, rel, OrderConfig())
    flip = torch.arange(len(bnd)) % 2 == 0  # flip every other normal
    s = torch.where(flip, -1.0, 1.0)
    score2, mass2 = pool_votes(bnd, vote * s, rel * s[:, None], OrderConfig())
    assert torch.allclose(score2, score * s, atol=1e-5) and torch.allclose(mass2, mass)


def test_frame_annotation_dict():
    _, ob = order_square(fg=(3.0, 0.0), bg=(0.0, 0.0))
    ann = ob.frame(0)
    assert set(ann) == {"y", "x", "ny", "nx", "confidence", "segment", "jump"}
    assert ann["segment"].dtype == torch.int64 and ann["y"].dtype == torch.float32
    assert int(ann["segment"].min()) == 0
    assert torch.allclose(ann["ny"] ** 2 + ann["nx"] ** 2, torch.ones(len(ann["y"])), atol=1e-5)
    assert torch.allclose(ann["jump"], torch.full_like(ann["jump"], 3.0), atol=0.3)
