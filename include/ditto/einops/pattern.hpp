// einops patterns: the grammar, parsed by one constexpr parser that serves both runtime patterns
// (rearrange(x, "b c h w -> b (h w) c")) and compile-time ones (rearrange<"...">(x)).
//
// Grammar (einops 0.8):   pattern := side "->" side
//   side  := item*          item := name | number | "..." | "(" (name | number | "...")* ")"
//   name  := a Python identifier that neither starts nor ends with "_"
//   "1" and "()" outside parentheses are anonymous axes of length 1 (an empty group);
//   a number n > 1 is an anonymous axis of length n, distinct from every other axis.
// This header only parses and checks; recipe.hpp turns a checked pattern into a plan.
#pragma once

#include <cstdint>
#include <string_view>

namespace ditto::einops {

inline constexpr int kMaxAxes = 32;    // elementary axes on one side of a pattern
inline constexpr int kMaxGroups = 32;  // top-level items on one side

// What went wrong while parsing or checking a pattern. The runtime turns a code into a message
// (recipe.hpp); the compile-time path turns it into a compiler error (static.hpp).
enum class Problem {
  none,
  no_arrow,                 // "b c h w"
  several_arrows,           // "a -> b -> c"
  stray_dot,                // "b . c" or "b .... c"
  several_ellipses,         // "... b ..."
  unknown_character,        // "b c! -> c b"
  nested_parentheses,       // "((a b)) -> a b"
  unbalanced_close,         // "a b) -> a b"
  unbalanced_open,          // "(a b -> a b"
  invalid_name,             // "b 2x -> b", "_a -> _a"
  duplicate_axis,           // "b b -> b"
  too_many_axes,            // more than kMaxAxes
  zero_length_axis,         // "b 0 -> b"
  ellipsis_right_only,      // "a b -> a ... b"
  ellipsis_in_parens_left,  // "(a ...) -> a ..."
  anonymous_in_rearrange,   // "a (b 2) -> a b"
  one_side_only,            // rearrange: an axis on one side only
  left_only_in_repeat,      // repeat: an axis on the left that is not on the right
  right_only_in_reduce,     // reduce: an axis on the right that is not on the left
};

enum class Op { rearrange, reduce, repeat };

struct Axis {
  std::string_view name;    // the text as written ("h", "3", or "..." for the ellipsis)
  std::int64_t anonymous = 0;  // n > 1 for an anonymous axis of length n, else 0
  bool ellipsis = false;
  constexpr bool same_identifier(const Axis& o) const {
    // anonymous axes are unique: "3" on the left and "3" on the right are different axes
    return anonymous == 0 && o.anonymous == 0 && ellipsis == o.ellipsis && name == o.name;
  }
};

// One side of a pattern: axes in order, cut into groups (a group is a top-level item: a bare
// axis, or a parenthesized composition; "1" and "()" are empty groups).
struct Side {
  Axis axes[kMaxAxes] = {};
  int n_axes = 0;
  int group_start[kMaxGroups + 1] = {};
  bool group_paren[kMaxGroups] = {};
  int n_groups = 0;
  bool has_ellipsis = false;
  bool ellipsis_in_parens = false;
  bool has_anonymous = false;  // an anonymous axis of length > 1

  constexpr int group_size(int g) const { return group_start[g + 1] - group_start[g]; }
  constexpr int find(const Axis& a) const {
    for (int i = 0; i < n_axes; ++i)
      if (axes[i].same_identifier(a)) return i;
    return -1;
  }
};

struct ParseResult {
  Side side;
  Problem problem = Problem::none;
  std::string_view token;  // the offending name, character or group, for the message
};

namespace detail {
constexpr bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
constexpr bool is_digit(char c) { return c >= '0' && c <= '9'; }
constexpr bool is_word(char c) { return is_alpha(c) || is_digit(c) || c == '_'; }
constexpr bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n'; }

// string_view::find by index. (GCC 12 rejects std::string_view::find in constant expressions
// when compiled with -fsanitize=address, so the parser avoids it.)
constexpr std::size_t find(std::string_view s, std::string_view what, std::size_t from = 0) {
  for (std::size_t i = from; i + what.size() <= s.size(); ++i) {
    bool match = true;
    for (std::size_t k = 0; k < what.size() && match; ++k) match = s[i + k] == what[k];
    if (match) return i;
  }
  return std::string_view::npos;
}

// A valid axis name: an identifier (no leading digit) that neither starts nor ends with '_'.
// With allow_underscore, "_" alone is also valid (parse_shape's "skip this axis").
constexpr bool valid_name(std::string_view s, bool allow_underscore) {
  if (s.empty() || is_digit(s[0])) return false;
  for (char c : s)
    if (!is_word(c)) return false;
  if (s == "_") return allow_underscore;
  return s.front() != '_' && s.back() != '_';
}
}  // namespace detail

struct ParseOptions {
  bool allow_underscore = false;   // parse_shape: "_" skips an axis, and may repeat
  bool allow_duplicates = false;   // einsum: "i i -> i" takes a diagonal
};

// Parses one side ("b (h w) c"). Never throws, so it runs inside constant evaluation too.
constexpr ParseResult parse_side(std::string_view text, ParseOptions opt = {}) {
  ParseResult r;
  Side& s = r.side;
  // dots: exactly one "..." and no other '.'
  int dots = 0;
  for (char c : text) dots += (c == '.');
  if (dots > 0) {
    const auto at = detail::find(text, "...");
    if (at == std::string_view::npos || dots != 3) {
      r.problem = (at != std::string_view::npos && dots % 3 == 0 && detail::find(text, "...", at + 3) != std::string_view::npos)
                      ? Problem::several_ellipses
                      : Problem::stray_dot;
      r.token = text;
      return r;
    }
  }
  bool in_paren = false;
  auto open_group = [&](bool paren) -> bool {
    if (s.n_groups >= kMaxGroups) return false;
    s.group_start[s.n_groups] = s.n_axes;
    s.group_paren[s.n_groups] = paren;
    return true;
  };
  auto close_group = [&]() {
    ++s.n_groups;
    s.group_start[s.n_groups] = s.n_axes;
  };
  auto add_axis = [&](std::string_view tok) -> bool {
    Axis a;
    a.name = tok;
    if (tok == "...") {
      a.ellipsis = true;
      s.has_ellipsis = true;
      s.ellipsis_in_parens = in_paren;
    } else if (detail::is_digit(tok[0])) {
      std::int64_t v = 0;
      for (char c : tok) {
        if (!detail::is_digit(c)) {
          r.problem = Problem::invalid_name;
          r.token = tok;
          return false;
        }
        if (v > (std::int64_t{1} << 50)) {
          r.problem = Problem::invalid_name;
          r.token = tok;
          return false;
        }
        v = v * 10 + (c - '0');
      }
      if (v == 0) {
        r.problem = Problem::zero_length_axis;
        r.token = tok;
        return false;
      }
      if (v == 1) {  // a unit axis: an empty group outside parentheses, nothing inside
        if (!in_paren) {
          if (!open_group(false)) {
            r.problem = Problem::too_many_axes;
            r.token = tok;
            return false;
          }
          close_group();
        }
        return true;
      }
      a.anonymous = v;
      s.has_anonymous = true;
    } else if (!detail::valid_name(tok, opt.allow_underscore)) {
      r.problem = Problem::invalid_name;
      r.token = tok;
      return false;
    }
    if (!a.ellipsis && a.anonymous == 0 && !(opt.allow_underscore && tok == "_") && !opt.allow_duplicates &&
        s.find(a) >= 0) {
      r.problem = Problem::duplicate_axis;
      r.token = tok;
      return false;
    }
    if (s.n_axes >= kMaxAxes || (!in_paren && s.n_groups >= kMaxGroups)) {
      r.problem = Problem::too_many_axes;
      r.token = tok;
      return false;
    }
    if (!in_paren) open_group(false);
    s.axes[s.n_axes++] = a;
    if (!in_paren) close_group();
    return true;
  };

  std::size_t i = 0;
  const std::size_t n = text.size();
  while (i < n) {
    const char c = text[i];
    if (detail::is_space(c)) {
      ++i;
    } else if (c == '(') {
      if (in_paren) {
        r.problem = Problem::nested_parentheses;
        r.token = text;
        return r;
      }
      if (!open_group(true)) {
        r.problem = Problem::too_many_axes;
        r.token = text;
        return r;
      }
      in_paren = true;
      ++i;
    } else if (c == ')') {
      if (!in_paren) {
        r.problem = Problem::unbalanced_close;
        r.token = text;
        return r;
      }
      in_paren = false;
      close_group();
      ++i;
    } else if (c == '.') {
      if (!add_axis(text.substr(i, 3))) return r;
      i += 3;
    } else if (detail::is_word(c)) {
      std::size_t j = i;
      while (j < n && detail::is_word(text[j])) ++j;
      if (!add_axis(text.substr(i, j - i))) return r;
      i = j;
    } else {
      r.problem = Problem::unknown_character;
      r.token = text.substr(i, 1);
      return r;
    }
  }
  if (in_paren) {
    r.problem = Problem::unbalanced_open;
    r.token = text;
  }
  return r;
}

// A whole pattern, both sides parsed and checked against the operation's rules.
struct ParsedPattern {
  Side left, right;
  Problem problem = Problem::none;
  std::string_view token;
  bool token_on_left = true;
};

constexpr ParsedPattern parse_pattern(std::string_view pattern, Op op) {
  ParsedPattern p;
  const auto arrow = detail::find(pattern, "->");
  if (arrow == std::string_view::npos) {
    p.problem = Problem::no_arrow;
    return p;
  }
  if (detail::find(pattern, "->", arrow + 2) != std::string_view::npos) {
    p.problem = Problem::several_arrows;
    return p;
  }
  const auto l = parse_side(pattern.substr(0, arrow));
  if (l.problem != Problem::none) {
    p.problem = l.problem;
    p.token = l.token;
    return p;
  }
  const auto r = parse_side(pattern.substr(arrow + 2));
  if (r.problem != Problem::none) {
    p.problem = r.problem;
    p.token = r.token;
    p.token_on_left = false;
    return p;
  }
  p.left = l.side;
  p.right = r.side;
  auto fail = [&](Problem pr, std::string_view tok, bool on_left) {
    p.problem = pr;
    p.token = tok;
    p.token_on_left = on_left;
    return p;
  };
  if (!p.left.has_ellipsis && p.right.has_ellipsis) return fail(Problem::ellipsis_right_only, "...", false);
  if (p.left.has_ellipsis && p.left.ellipsis_in_parens) return fail(Problem::ellipsis_in_parens_left, "...", true);
  if (op == Op::rearrange) {
    for (int i = 0; i < p.left.n_axes; ++i)
      if (p.left.axes[i].anonymous) return fail(Problem::anonymous_in_rearrange, p.left.axes[i].name, true);
    for (int i = 0; i < p.right.n_axes; ++i)
      if (p.right.axes[i].anonymous) return fail(Problem::anonymous_in_rearrange, p.right.axes[i].name, false);
    for (int i = 0; i < p.left.n_axes; ++i)
      if (p.right.find(p.left.axes[i]) < 0) return fail(Problem::one_side_only, p.left.axes[i].name, true);
    for (int i = 0; i < p.right.n_axes; ++i)
      if (p.left.find(p.right.axes[i]) < 0) return fail(Problem::one_side_only, p.right.axes[i].name, false);
  } else if (op == Op::repeat) {
    for (int i = 0; i < p.left.n_axes; ++i)
      if (p.right.find(p.left.axes[i]) < 0) return fail(Problem::left_only_in_repeat, p.left.axes[i].name, true);
  } else {
    for (int i = 0; i < p.right.n_axes; ++i)
      if (p.left.find(p.right.axes[i]) < 0) return fail(Problem::right_only_in_reduce, p.right.axes[i].name, false);
  }
  return p;
}

// A short explanation of a problem, shared by runtime messages and docs.
constexpr std::string_view describe(Problem p) {
  switch (p) {
    case Problem::none: return "no problem";
    case Problem::no_arrow: return "a pattern needs '->' between its input and output sides";
    case Problem::several_arrows: return "a pattern has exactly one '->'";
    case Problem::stray_dot: return "dots are only allowed as one ellipsis '...'";
    case Problem::several_ellipses: return "only one ellipsis '...' per side is allowed";
    case Problem::unknown_character: return "unknown character";
    case Problem::nested_parentheses: return "axis composition is one level deep (parentheses inside parentheses)";
    case Problem::unbalanced_close: return "')' without a matching '('";
    case Problem::unbalanced_open: return "'(' is never closed";
    case Problem::invalid_name:
      return "invalid axis name (names are identifiers that neither start nor end with '_', or positive numbers)";
    case Problem::duplicate_axis: return "an axis appears twice on one side";
    case Problem::too_many_axes: return "too many axes on one side (at most 32)";
    case Problem::zero_length_axis: return "an anonymous axis must have a positive length";
    case Problem::ellipsis_right_only: return "'...' is on the right side but not on the left";
    case Problem::ellipsis_in_parens_left: return "'...' inside parentheses is not allowed on the left side";
    case Problem::anonymous_in_rearrange:
      return "rearrange does not take anonymous axes of length > 1 (only 1 or ())";
    case Problem::one_side_only: return "rearrange needs every axis on both sides";
    case Problem::left_only_in_repeat: return "repeat cannot drop an axis of the input (use reduce)";
    case Problem::right_only_in_reduce: return "reduce cannot create an axis (use repeat)";
  }
  return "unknown problem";
}

}  // namespace ditto::einops
