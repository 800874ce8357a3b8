// From a checked pattern to a plan: which elementary axes the input splits into, how they are
// permuted, which are reduced and which are added. A recipe depends on the pattern, the
// operation, the names of the lengths given as arguments and the input rank; it is built once
// and cached (einops does the same with an lru_cache), so a pattern is never parsed twice.
// `cook` then fills in the lengths from an actual shape: cheap integer work on a few axes.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "../core/error.hpp"
#include "../core/tensor.hpp"
#include "pattern.hpp"

namespace ditto {

// Lengths of axes given as arguments: {{"p1", 2}, {"p2", 2}}. Sorted by name, so the same set
// of names always makes the same cache key. parse_shape returns this type, so its result can be
// passed straight back.
using AxisLengths = std::map<std::string, std::int64_t, std::less<>>;

namespace einops {

enum class Reduction { none, sum, mean, max, min, prod };

inline std::string_view reduction_name(Reduction r) {
  switch (r) {
    case Reduction::sum: return "sum";
    case Reduction::mean: return "mean";
    case Reduction::max: return "max";
    case Reduction::min: return "min";
    case Reduction::prod: return "prod";
    default: return "none";
  }
}

inline Reduction parse_reduction(std::string_view name, std::string_view pattern) {
  if (name == "sum") return Reduction::sum;
  if (name == "mean") return Reduction::mean;
  if (name == "max") return Reduction::max;
  if (name == "min") return Reduction::min;
  if (name == "prod") return Reduction::prod;
  throw EinopsError(ditto::detail::cat("reduce(\"", pattern, "\", \"", name,
                                "\"): unknown reduction; expected one of sum, mean, max, min, prod"));
}

// Everything about a pattern that does not depend on the actual lengths.
struct Recipe {
  Op op = Op::rearrange;
  std::string pattern;
  int ndim = 0;                            // input rank this recipe was made for
  std::vector<std::string> names;          // elementary axes: left ones in order, then new ones
  std::vector<std::int64_t> fixed_length;  // anonymous axes' lengths, else 0
  std::vector<int> given;                  // index into the AxisLengths argument, else -1
  int n_left = 0;                          // elementary axes that come from the input
  std::vector<std::vector<int>> input_groups;  // per input axis: its elementary axes
  std::vector<std::vector<int>> output_groups; // per output axis: its elementary axes
  std::vector<int> reduced;                // left elementary axes absent from the output
};

// A recipe with lengths filled in: the input seen as elementary axes (row-major strides), the
// output as a walk over them (stride 0 for a new axis), the reduced axes, and the final shape.
struct Cooked {
  std::vector<std::int64_t> length;       // per elementary axis
  std::vector<std::int64_t> out_len, out_stride;  // output elementary axes in output order
  std::vector<std::int64_t> red_len, red_stride;  // reduced axes in input order
  Shape out_shape;
  bool is_view = false;                   // the result is the input under another shape
};

namespace detail {
using ditto::detail::cat;

inline std::string quote_lengths(const AxisLengths& lengths) {
  std::string s;
  for (const auto& [k, v] : lengths) s += cat(", ", k, "=", v);
  return s;
}

// The prefix of every message: `rearrange("b c h w -> b (h w) c", p=2) on shape [2,3,4]: `.
inline std::string where(Op op, Reduction red, std::string_view pattern, const AxisLengths& lengths,
                         const Shape* shape) {
  std::string s = op == Op::rearrange ? "rearrange(\"" : op == Op::repeat ? "repeat(\"" : "reduce(\"";
  s += pattern;
  s += "\"";
  if (op == Op::reduce) s += cat(", \"", reduction_name(red), "\"");
  s += quote_lengths(lengths);
  s += ")";
  if (shape) s += cat(" on input of shape ", shape_str(*shape));
  return s + ": ";
}

inline std::string explain(const ParsedPattern& p) {
  std::string s(describe(p.problem));
  switch (p.problem) {
    case Problem::no_arrow:
    case Problem::several_arrows:
    case Problem::ellipsis_right_only:
    case Problem::ellipsis_in_parens_left:
      return s;
    case Problem::stray_dot:
    case Problem::several_ellipses:
    case Problem::nested_parentheses:
    case Problem::unbalanced_close:
    case Problem::unbalanced_open:
      return cat(s, " (in the ", p.token_on_left ? "left" : "right", " side \"", p.token, "\")");
    case Problem::one_side_only:
      return cat(s, ": axis '", p.token, "' is only on the ", p.token_on_left ? "left" : "right", " side");
    default:
      return cat(s, ": '", p.token, "' on the ", p.token_on_left ? "left" : "right", " side");
  }
}
}  // namespace detail

// Builds the recipe for an input of rank `ndim`. Throws EinopsError for a bad pattern, a rank
// that does not fit, or lengths that name axes the pattern lacks.
inline Recipe build_recipe(std::string_view pattern, Op op, Reduction red, const AxisLengths& lengths, int ndim,
                           const Shape* shape_for_messages = nullptr) {
  using detail::cat;
  const ParsedPattern p = parse_pattern(pattern, op);
  auto fail = [&](const std::string& why) -> EinopsError {
    return EinopsError(detail::where(op, red, pattern, lengths, shape_for_messages) + why);
  };
  if (p.problem != Problem::none) throw fail(detail::explain(p));

  Recipe r;
  r.op = op;
  r.pattern = std::string(pattern);
  r.ndim = ndim;
  const Side& L = p.left;
  const Side& R = p.right;
  const int n_ell = L.has_ellipsis ? ndim - (L.n_groups - 1) : 0;
  if (L.has_ellipsis) {
    if (n_ell < 0)
      throw fail(cat("the left side has ", L.n_groups - 1, " axes besides '...', so the input needs rank >= ",
                     L.n_groups - 1, ", but it has rank ", ndim));
  } else if (ndim != L.n_groups) {
    throw fail(cat("the left side has ", L.n_groups, " axes but the input has rank ", ndim));
  }
  // Elementary axes of the left side; '...' becomes n_ell axes named "...0", "...1", ...
  std::map<std::string, int, std::less<>> index;  // identifier -> elementary axis
  auto add = [&](std::string name, std::int64_t fixed) {
    r.names.push_back(name);
    r.fixed_length.push_back(fixed);
    r.given.push_back(-1);
    const int id = static_cast<int>(r.names.size()) - 1;
    if (fixed == 0) index[name] = id;
    return id;
  };
  std::vector<int> left_id(static_cast<std::size_t>(L.n_axes), -1), ell_ids;
  for (int g = 0; g < L.n_groups; ++g) {
    if (L.group_size(g) == 1 && L.axes[L.group_start[g]].ellipsis) {
      for (int k = 0; k < n_ell; ++k) {
        ell_ids.push_back(add(cat("...", k), 0));
        r.input_groups.push_back({ell_ids.back()});
      }
      continue;
    }
    std::vector<int> group;
    for (int a = L.group_start[g]; a < L.group_start[g + 1]; ++a) {
      const Axis& ax = L.axes[a];
      left_id[static_cast<std::size_t>(a)] = add(std::string(ax.name), ax.anonymous);
      group.push_back(left_id[static_cast<std::size_t>(a)]);
    }
    r.input_groups.push_back(std::move(group));
  }
  r.n_left = static_cast<int>(r.names.size());
  // Output groups; axes not on the left are new (repeat).
  for (int g = 0; g < R.n_groups; ++g) {
    std::vector<int> group;
    for (int a = R.group_start[g]; a < R.group_start[g + 1]; ++a) {
      const Axis& ax = R.axes[a];
      if (ax.ellipsis) {
        if (R.group_paren[g]) {
          group.insert(group.end(), ell_ids.begin(), ell_ids.end());
        } else {
          for (int id : ell_ids) r.output_groups.push_back({id});
        }
        continue;
      }
      int id;
      if (ax.anonymous) {
        id = add(std::string(ax.name), ax.anonymous);
      } else if (auto it = index.find(ax.name); it != index.end()) {
        id = it->second;
      } else {
        id = add(std::string(ax.name), 0);
      }
      group.push_back(id);
    }
    if (!(R.group_size(g) == 1 && R.axes[R.group_start[g]].ellipsis && !R.group_paren[g]))
      r.output_groups.push_back(std::move(group));
  }
  // Reduced axes: on the left, not in the output.
  std::vector<bool> in_output(r.names.size(), false);
  for (const auto& g : r.output_groups)
    for (int id : g) in_output[static_cast<std::size_t>(id)] = true;
  for (int id = 0; id < r.n_left; ++id)
    if (!in_output[static_cast<std::size_t>(id)]) r.reduced.push_back(id);
  // Lengths given as arguments must name axes of the pattern (named, not anonymous).
  int k = 0;
  for (const auto& [name, value] : lengths) {
    if (!ditto::einops::detail::valid_name(name, false))
      throw fail(cat("'", name, "' is not a valid axis name"));
    auto it = index.find(name);
    if (it == index.end() || name.rfind("...", 0) == 0)
      throw fail(cat("axis '", name, "' is given a length but is not in the pattern"));
    r.given[static_cast<std::size_t>(it->second)] = k++;
  }
  // Every group of the input may hold at most one axis whose length is unknown until the shape
  // is seen; every new axis of repeat needs a length.
  for (std::size_t g = 0; g < r.input_groups.size(); ++g) {
    std::string unknown;
    int n_unknown = 0;
    for (int id : r.input_groups[g])
      if (r.fixed_length[id] == 0 && r.given[id] < 0) {
        unknown += (n_unknown ? ", " : "") + r.names[id];
        ++n_unknown;
      }
    if (n_unknown > 1)
      throw fail(cat("could not infer the lengths of ", unknown, " from input axis ", g,
                     ": give all but one of them as arguments"));
  }
  for (std::size_t id = static_cast<std::size_t>(r.n_left); id < r.names.size(); ++id)
    if (r.fixed_length[id] == 0 && r.given[id] < 0)
      throw fail(cat("new axis '", r.names[id], "' needs a length: pass {\"", r.names[id], "\", n}"));
  return r;
}

// Fills in lengths from the input shape and the given lengths; checks that they agree.
inline Cooked cook(const Recipe& r, const Shape& shape, const AxisLengths& lengths, Reduction red) {
  using detail::cat;
  auto fail = [&](const std::string& why) -> EinopsError {
    return EinopsError(detail::where(r.op, red, r.pattern, lengths, &shape) + why);
  };
  // Every product of lengths is checked: a wrapped product could match a real length and send
  // the kernels outside the input (einops, on Python integers, simply never matches).
  // (`what` makes the message only on failure: cook runs on every call.)
  auto times = [&](std::int64_t a, std::int64_t b, auto&& what) {
    std::int64_t p;
    if (__builtin_mul_overflow(a, b, &p)) throw fail(cat(what(), " overflows int64"));
    return p;
  };
  Cooked c;
  const std::size_t n = r.names.size();
  c.length.assign(n, 0);
  std::vector<std::int64_t> given_values;
  given_values.reserve(lengths.size());
  for (const auto& kv : lengths) given_values.push_back(kv.second);
  for (std::size_t id = 0; id < n; ++id) {
    if (r.fixed_length[id]) c.length[id] = r.fixed_length[id];
    else if (r.given[id] >= 0) c.length[id] = given_values[static_cast<std::size_t>(r.given[id])];
    else c.length[id] = -1;
    if (r.given[id] >= 0 && c.length[id] < 0)
      throw fail(cat("axis '", r.names[id], "' is given a negative length ", c.length[id]));
  }
  for (std::size_t g = 0; g < r.input_groups.size(); ++g) {
    const std::int64_t len = shape[g];
    std::int64_t known = 1;
    int unknown = -1;
    std::string group;
    for (int id : r.input_groups[g]) {
      group += (group.empty() ? "" : " ") + r.names[static_cast<std::size_t>(id)];
      if (c.length[static_cast<std::size_t>(id)] < 0) unknown = id;
    }
    if (r.input_groups[g].size() != 1) group = "(" + group + ")";
    for (int id : r.input_groups[g])
      if (c.length[static_cast<std::size_t>(id)] >= 0)
        known = times(known, c.length[static_cast<std::size_t>(id)], [&] {
          return cat("input axis ", g, " (length ", len, "): the product of the known lengths in ", group);
        });
    if (unknown < 0) {
      if (known != len)
        throw fail(cat("input axis ", g, " has length ", len, " but ", group, " = ", known));
    } else {
      if (known == 0 || len % known != 0)
        throw fail(cat("input axis ", g, " of length ", len, " cannot be split as ", group, ": ", len,
                       " is not divisible by ", known));
      c.length[static_cast<std::size_t>(unknown)] = len / known;
    }
  }
  // Strides of the left elementary axes in the (contiguous, row-major) input.
  std::vector<std::int64_t> stride(static_cast<std::size_t>(r.n_left), 0);
  std::int64_t s = 1;
  for (int id = r.n_left - 1; id >= 0; --id) {
    stride[static_cast<std::size_t>(id)] = s;
    // (a product of the input's lengths: its element count when it is not empty; an empty
    // input's strides are never used, so there they may wrap, without undefined behaviour)
    s = static_cast<std::int64_t>(static_cast<std::uint64_t>(s) * static_cast<std::uint64_t>(c.length[static_cast<std::size_t>(id)]));
  }
  for (std::size_t g = 0; g < r.output_groups.size(); ++g) {
    std::int64_t len = 1;
    for (int id : r.output_groups[g]) {
      len = times(len, c.length[static_cast<std::size_t>(id)], [&] { return cat("the length of output axis ", g); });
      c.out_len.push_back(c.length[static_cast<std::size_t>(id)]);
      c.out_stride.push_back(id < r.n_left ? stride[static_cast<std::size_t>(id)] : 0);
    }
    c.out_shape.push_back(len);
  }
  for (int id : r.reduced) {
    c.red_len.push_back(c.length[static_cast<std::size_t>(id)]);
    c.red_stride.push_back(stride[static_cast<std::size_t>(id)]);
  }
  // A pure reshape: the non-unit axes keep their input order and nothing is added or reduced.
  if (r.op == Op::rearrange) {
    std::int64_t last = -1;
    bool ordered = true;
    for (std::size_t i = 0; i < c.out_len.size() && ordered; ++i) {
      if (c.out_len[i] == 1) continue;
      ordered = c.out_stride[i] < last || last < 0;
      last = c.out_stride[i];
    }
    c.is_view = ordered;
  }
  return c;
}

// The process-wide recipe cache. Thread-safe; an inline function's statics have one instance per
// program however many times the header is included (also in clang-repl).
struct RecipeCache {
  std::mutex mutex;
  std::unordered_map<std::string, std::shared_ptr<const Recipe>> recipes;
  static RecipeCache& instance() {
    static RecipeCache cache;
    return cache;
  }
};

// How many recipes are cached (for tests: a pattern used in a loop is parsed once).
inline std::size_t recipe_cache_size() {
  auto& c = RecipeCache::instance();
  std::lock_guard<std::mutex> lock(c.mutex);
  return c.recipes.size();
}

inline std::shared_ptr<const Recipe> cached_recipe(std::string_view pattern, Op op, Reduction red,
                                                   const AxisLengths& lengths, int ndim, const Shape& shape) {
  auto& c = RecipeCache::instance();
  // The key: op, reduction, rank, then the pattern and each given axis name, each prefixed by its
  // length, so no pattern can spell another's key ("(a b) -> a|a" with no lengths is not
  // "(a b) -> a" with a length for a: a separator inside a pattern once made them collide).
  std::string key;
  key.reserve(pattern.size() + 24 + lengths.size() * 8);
  key += static_cast<char>('0' + static_cast<int>(op));
  key += static_cast<char>('0' + static_cast<int>(red));
  key += std::to_string(ndim);
  key += ':';
  key += std::to_string(pattern.size());
  key += ':';
  key += pattern;
  for (const auto& kv : lengths) {
    key += std::to_string(kv.first.size());
    key += ':';
    key += kv.first;
  }
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    if (auto it = c.recipes.find(key); it != c.recipes.end()) return it->second;
  }
  auto recipe = std::make_shared<const Recipe>(build_recipe(pattern, op, red, lengths, ndim, &shape));
  std::lock_guard<std::mutex> lock(c.mutex);
  // A program that builds patterns on the fly stays bounded; callers hold shared pointers, so
  // clearing never invalidates a recipe in use.
  if (c.recipes.size() > 4096) c.recipes.clear();
  return c.recipes.emplace(std::move(key), std::move(recipe)).first->second;
}

}  // namespace einops
}  // namespace ditto
