#!/usr/bin/env python3
"""Writes tests/fixtures/einops_cases.json: inputs and outputs of real einops on NumPy.

ditto's einops tests compare against these numbers, so the reference is einops itself, not a
re-derivation. Run with the einops source (0.8.x) on the path:

    EINOPS_SRC=/path/to/einops-0.8.1 /usr/bin/python3 tools/gen_einops_fixtures.py

Each invalid case is also run through einops, which must raise too; the expected message
fragment is ditto's own wording.
"""
import json
import os
import sys

import numpy as np

src = os.environ.get("EINOPS_SRC")
if not src:
    sys.exit("set EINOPS_SRC to a checkout of einops 0.8 (the folder that holds einops/)")
sys.path.insert(0, src)
import einops  # noqa: E402

assert einops.__version__.startswith("0.8"), einops.__version__
rng = np.random.RandomState(0)


def tensor(shape, near_one=False):
    x = rng.standard_normal(shape).astype(np.float32)
    if near_one:  # keeps products over many elements finite and well conditioned
        x = (1.0 + 0.1 * x).astype(np.float32)
    return x


def enc(x):
    x = np.asarray(x, dtype=np.float32)
    return {"shape": list(x.shape), "data": [float(v) for v in x.reshape(-1)]}


valid = []


def case(op, pattern, shapes, lengths=None, reduction=None, near_one=False, as_list=False):
    lengths = lengths or {}
    xs = [tensor(s, near_one) for s in shapes]
    arg = xs if as_list else xs[0]
    if op == "rearrange":
        out = einops.rearrange(arg, pattern, **lengths)
    elif op == "reduce":
        out = einops.reduce(arg, pattern, reduction, **lengths)
    elif op == "repeat":
        out = einops.repeat(arg, pattern, **lengths)
    elif op == "einsum":
        out = einops.einsum(*xs, pattern)
    else:
        raise ValueError(op)
    valid.append({"op": op, "pattern": pattern, "lengths": lengths, "reduction": reduction,
                  "as_list": as_list, "inputs": [enc(x) for x in xs], "output": enc(out)})


# rearrange: permutations, compositions, decompositions, ellipsis, unit axes, lists
case("rearrange", "b c h w -> b h w c", [(2, 3, 4, 5)])
case("rearrange", "b c h w -> b (h w) c", [(2, 3, 4, 5)])
case("rearrange", "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", [(2, 3, 4, 6)], {"p1": 2, "p2": 2})
case("rearrange", "b (h w) (p1 p2 c) -> b c (h p1) (w p2)", [(2, 6, 18)], {"h": 2, "p1": 2, "p2": 3})
case("rearrange", "b t c h w -> b c t h w", [(2, 3, 4, 5, 6)])
case("rearrange", "a b c -> c b a", [(2, 3, 4)])
case("rearrange", "a b c -> (a b c)", [(2, 3, 4)])
case("rearrange", "(a b) c -> a b c", [(6, 4)], {"a": 2})
case("rearrange", "a b -> b a", [(3, 5)])
case("rearrange", "... h w -> ... w h", [(2, 3, 4, 5)])
case("rearrange", "b ... -> b (...)", [(2, 3, 4)])
case("rearrange", "... c -> c ...", [(2, 3, 4)])
case("rearrange", "b c h w -> b c () h w", [(2, 3, 4, 5)])
case("rearrange", "b 1 h -> b h", [(2, 1, 3)])
case("rearrange", "b () h -> h b", [(2, 1, 3)])
case("rearrange", "a b -> a 1 b 1", [(2, 3)])
case("rearrange", "a b c d -> (d a) (c b)", [(2, 3, 4, 5)])
case("rearrange", "x -> x", [(5,)])
case("rearrange", "(h w) -> w h", [(12,)], {"h": 3})
case("rearrange", "b (c1 c2) h -> b c2 (c1 h)", [(2, 6, 3)], {"c1": 2})
case("rearrange", "... -> ...", [(2, 3)])
case("rearrange", "a ... b -> b ... a", [(2, 3, 4, 5)])
case("rearrange", "a ... -> (a ...)", [(2, 3, 4)])
case("rearrange", "a b c d e -> e d c b a", [(2, 1, 3, 1, 2)])
case("rearrange", "n h w -> h (n w)", [(3, 4), (3, 4), (3, 4)], as_list=True)
case("rearrange", "b (t h w) d -> b t h w d", [(1, 24, 2)], {"t": 2, "h": 3})
case("rearrange", "b t h w d -> b (t h w) d", [(1, 2, 3, 4, 2)])
case("rearrange", "(b1 b2) h w c -> (b1 h) (b2 w) c", [(4, 2, 3, 1)], {"b1": 2})
case("rearrange", "a b c -> b (c a)", [(2, 3, 4)])
case("rearrange", "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", [(1, 4, 8, 8)], {"p1": 4, "p2": 4})
case("rearrange", "b ... c -> b c ...", [(2, 3)])
case("rearrange", "(b t) c h w -> b c t h w", [(6, 2, 3, 3)], {"t": 3})
case("rearrange", "b c t h w -> (b t) (h w) c", [(2, 3, 4, 2, 2)])

# reduce: every reduction, anonymous and given lengths, unit and empty outputs, lists
case("reduce", "b c h w -> b c", [(2, 3, 4, 5)], reduction="mean")
case("reduce", "b c h w -> b c", [(2, 3, 4, 5)], reduction="sum")
case("reduce", "b c h w -> b c", [(2, 3, 4, 5)], reduction="max")
case("reduce", "b c h w -> b c", [(2, 3, 4, 5)], reduction="min")
case("reduce", "b c h w -> b c", [(2, 3, 4, 5)], reduction="prod", near_one=True)
case("reduce", "t b c -> b c", [(4, 2, 3)], reduction="max")
case("reduce", "b c (h h2) (w w2) -> b c h w", [(2, 3, 4, 6)], {"h2": 2, "w2": 2}, reduction="max")
case("reduce", "b c (h 2) (w 2) -> b c h w", [(2, 3, 4, 6)], reduction="mean")
case("reduce", "b c h w -> 1 c 1 1", [(2, 3, 4, 5)], reduction="mean")
case("reduce", "b c h w -> b c () ()", [(2, 3, 4, 5)], reduction="sum")
case("reduce", "b n d -> b d", [(2, 5, 4)], reduction="sum")
case("reduce", "a b -> ", [(3, 4)], reduction="sum")
case("reduce", "... c -> c", [(2, 3, 4)], reduction="min")
case("reduce", "b c (h1 h2) -> b h1 c", [(2, 3, 4)], {"h1": 2}, reduction="prod", near_one=True)
case("reduce", "a b c -> c a", [(2, 3, 4)], reduction="max")
case("reduce", "(a b) c -> b c", [(6, 3)], {"a": 2}, reduction="sum")
case("reduce", "b c h w -> b c h w", [(2, 3, 4, 5)], reduction="mean")
case("reduce", "x y -> y", [(7, 3)], reduction="mean")
case("reduce", "n a b -> a b", [(2, 3), (2, 3)], reduction="mean", as_list=True)
case("reduce", "b (h 2) (w 3) c -> b h w c", [(1, 4, 6, 2)], reduction="min")
case("reduce", "b t c h w -> b c", [(2, 3, 2, 2, 2)], reduction="sum")
case("reduce", "a b c -> b", [(5, 3, 7)], reduction="prod", near_one=True)

# repeat: new named and anonymous axes, upsampling, ellipsis
case("repeat", "h w -> h w c", [(2, 3)], {"c": 3})
case("repeat", "h w -> (h 2) (w 2)", [(2, 3)])
case("repeat", "h w -> (repeat h) w", [(2, 3)], {"repeat": 2})
case("repeat", "h w -> h (w repeat)", [(2, 3)], {"repeat": 3})
case("repeat", "h w -> h w 3", [(2, 3)])
case("repeat", "c h w -> c (h h2) (w w2)", [(3, 2, 2)], {"h2": 2, "w2": 2})
case("repeat", "... -> 2 ...", [(2, 3)])
case("repeat", "b h w -> b (h w) r", [(2, 2, 3)], {"r": 2})
case("repeat", "a -> a", [(4,)])
case("repeat", "a b -> b a k", [(2, 3)], {"k": 2})
case("repeat", "b (h w) -> b h w c", [(2, 6)], {"h": 2, "c": 2})
case("repeat", "d -> b n d", [(4,)], {"b": 2, "n": 3})

# einsum: contractions, batch axes, diagonal, three operands, ellipsis
case("einsum", "b i d, b j d -> b i j", [(2, 3, 4), (2, 5, 4)])
case("einsum", "i j, j k -> i k", [(3, 4), (4, 5)])
case("einsum", "i i -> i", [(4, 4)])
case("einsum", "i j -> j i", [(3, 4)])
case("einsum", "a b c ->", [(2, 3, 4)])
case("einsum", "b h i d, b h j d -> b h i j", [(2, 2, 3, 4), (2, 2, 5, 4)])
case("einsum", "i, i ->", [(5,), (5,)])
case("einsum", "i, j -> i j", [(3,), (4,)])
case("einsum", "... i j, ... j k -> ... i k", [(2, 3, 4), (2, 4, 5)])
case("einsum", "a b, b c, c d -> a d", [(2, 3), (3, 4), (4, 5)])
case("einsum", "batch i d, batch i d -> batch", [(2, 3, 4), (2, 3, 4)])
case("einsum", "b h i j, b h j d -> b i h d", [(2, 3, 4, 5), (2, 3, 5, 2)])
case("einsum", "i j, i j -> j", [(3, 4), (3, 4)])

# pack / unpack and parse_shape: shapes from einops, data from concatenation
packs = []
for pattern, shapes in [("i j * k", [(2, 3, 5), (2, 3, 7, 5), (2, 3, 7, 9, 5)]),
                        ("b *", [(2, 3), (2, 4)]),
                        ("* d", [(3,), (2, 3)]),
                        ("b * d", [(2, 1, 4), (2, 3, 2, 4), (2, 4)])]:
    xs = [tensor(s) for s in shapes]
    packed, ps = einops.pack(xs, pattern)
    back = einops.unpack(packed, ps, pattern)
    assert all(np.array_equal(a, b) for a, b in zip(xs, back))
    packs.append({"pattern": pattern, "inputs": [enc(x) for x in xs], "output": enc(packed),
                  "packed_shapes": [list(map(int, p)) for p in ps]})
parse_shapes = []
for pattern, shape in [("b _ h w", (2, 3, 5, 7)), ("b ... w", (2, 3, 5, 7)), ("1 a", (1, 4)),
                       ("... c", (6,)), ("b 3 _", (2, 3, 4))]:
    parse_shapes.append({"pattern": pattern, "shape": list(shape),
                         "result": {k: int(v) for k, v in einops.parse_shape(np.zeros(shape), pattern).items()}})

# invalid patterns: einops must raise as well; `expect` is a fragment of ditto's message
invalid = []


def bad(op, pattern, shape, expect, lengths=None, reduction="sum", shapes=None):
    lengths = lengths or {}
    x = np.zeros(shape, dtype=np.float32) if shape is not None else None
    try:
        if op == "rearrange":
            einops.rearrange(x, pattern, **lengths)
        elif op == "reduce":
            einops.reduce(x, pattern, reduction, **lengths)
        elif op == "repeat":
            einops.repeat(x, pattern, **lengths)
        elif op == "pack":
            einops.pack([np.zeros(s) for s in shapes], pattern)
        elif op == "einsum":
            einops.einsum(*[np.zeros(s) for s in shapes], pattern)
        elif op == "parse_shape":
            einops.parse_shape(x, pattern)
        raise AssertionError(f"einops accepted {op} {pattern!r} on {shape}")
    except AssertionError:
        raise
    except Exception as e:  # noqa: BLE001  einops raises EinopsError, ValueError or RuntimeError
        invalid.append({"op": op, "pattern": pattern, "shape": list(shape) if shape else None,
                        "shapes": [list(s) for s in shapes] if shapes else None, "lengths": lengths,
                        "reduction": reduction, "expect": expect, "einops_error": str(e).strip().splitlines()[-1]})


bad("rearrange", "b c h w -> b c", (2, 3, 4, 5), "axis 'h' is only on the left side")
bad("rearrange", "b c h -> b c h w", (2, 3, 4), "axis 'w' is only on the right side")
bad("rearrange", "b b c -> b c", (2, 2, 3), "an axis appears twice on one side: 'b'")
bad("rearrange", "a b -> (a b", (2, 3), "'(' is never closed")
bad("rearrange", "a b) -> a b", (2, 3), "')' without a matching '('")
bad("rearrange", "((a b)) -> a b", (6,), "parentheses inside parentheses")
bad("rearrange", "a b . -> a b", (2, 3), "dots are only allowed as one ellipsis")
bad("rearrange", "... a ... -> a", (2, 3), "only one ellipsis")
bad("rearrange", "a b -> a ... b", (2, 3), "'...' is on the right side but not on the left")
bad("rearrange", "(a ...) -> a ...", (2, 3), "'...' inside parentheses is not allowed on the left side")
bad("rearrange", "a (b 2) -> a b", (2, 4), "rearrange does not take anonymous axes")
bad("rearrange", "a b c -> a b c", (2, 3), "the left side has 3 axes but the input has rank 2")
bad("rearrange", "a b c ... -> a b c ...", (2, 3), "so the input needs rank >= 3, but it has rank 2")
bad("rearrange", "a (b c) -> a b c", (2, 6), "could not infer the lengths of b, c from input axis 1")
bad("rearrange", "a (b c) -> a b c", (2, 6), "6 is not divisible by 4", {"b": 4})
bad("rearrange", "a b -> a b", (2, 3), "axis 'c' is given a length but is not in the pattern", {"c": 2})
bad("rearrange", "a b -> a b", (2, 3), "input axis 0 has length 2 but a = 3", {"a": 3})
bad("rearrange", "a 2b -> a", (2, 3), "invalid axis name")
bad("rearrange", "_a b -> b _a", (2, 3), "invalid axis name")
bad("rearrange", "a b ! -> a b", (2, 3, 1), "unknown character")
bad("rearrange", "a b c", (2, 3, 4), "a pattern needs '->'")
bad("repeat", "a b -> a b c", (2, 3), "new axis 'c' needs a length")
bad("repeat", "a b -> a", (2, 3), "repeat cannot drop an axis of the input")
bad("reduce", "a b -> a c", (2, 3), "reduce cannot create an axis")
bad("reduce", "a b -> a", (2, 3), "unknown reduction", reduction="median")
bad("reduce", "a 0 -> a", (2, 3), "anonymous axis must have a positive length")
bad("pack", "i j k", None, "exactly one '*'", shapes=[(2, 3, 4)])
bad("pack", "i * i", None, "axis 'i' appears twice", shapes=[(2, 3, 4)])
bad("pack", "i j *", None, "needs at least 2 axes", shapes=[(2,)])
bad("einsum", "i j, j k -> i l", None, "output axis 'l' is in no operand", shapes=[(2, 3), (3, 4)])
bad("einsum", "i j, j k -> i k", None, "axis 'j' has length 3 in one operand and 4", shapes=[(2, 3), (4, 5)])
bad("einsum", "(i j) -> i j", None, "not supported in einsum", shapes=[(6,)])
bad("parse_shape", "a (b c)", (2, 6), "composite axes")
bad("parse_shape", "a b c", (2, 6), "the pattern has 3 axes but the tensor has rank 2")

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "einops_cases.json")
with open(out, "w") as f:
    json.dump({"generator": "tools/gen_einops_fixtures.py", "einops_version": einops.__version__,
               "valid": valid, "pack": packs, "parse_shape": parse_shapes, "invalid": invalid}, f)
print(f"{len(valid)} valid cases, {len(packs)} pack, {len(parse_shapes)} parse_shape, {len(invalid)} invalid -> {out}")
