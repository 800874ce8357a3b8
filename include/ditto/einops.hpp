// All of ditto's einops: rearrange, reduce, repeat, pack, unpack, einsum, parse_shape, with
// runtime and compile-time patterns.
#pragma once

#include "einops/einsum.hpp"
#include "einops/pack.hpp"
#include "einops/rearrange.hpp"
#include "einops/static.hpp"
