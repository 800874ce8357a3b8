// Compile-time patterns: the pattern is a template argument, checked by the compiler.
//
//   auto tokens = ditto::rearrange<"b c (h p1) (w p2) -> b (h w) (p1 p2 c)">(img, {{"p1", 2}, {"p2", 2}});
//   static_assert(ditto::einops::output_rank<"b c h w -> b (h w) c"> == 3);
//
// A malformed pattern does not compile: the error names the problem, e.g.
//   error: call to non-'constexpr' function 'void ditto::einops::pattern_error::
//          axis_is_on_one_side_only_rearrange_needs_it_on_both()'
// Where the pattern has no ellipsis, its input and output ranks are compile-time constants
// (input_rank / output_rank) and the input's rank is checked against it before any work.
#pragma once

#include <algorithm>
#include <cstddef>
#include <string_view>

#include "pattern.hpp"
#include "rearrange.hpp"

namespace ditto {

// A string literal usable as a template argument (C++20 class-type non-type parameter).
template <std::size_t N>
struct FixedString {
  char chars[N] = {};
  constexpr FixedString(const char (&s)[N]) { std::copy_n(s, N, chars); }
  constexpr std::string_view view() const { return {chars, N - 1}; }
};

namespace einops {

// One function per problem: calling a non-constexpr function during constant evaluation is a
// compile error whose text is the function's name, so the name is the message.
namespace pattern_error {
void pattern_needs_one_arrow_between_input_and_output();
void pattern_has_more_than_one_arrow();
void dots_are_only_allowed_as_one_ellipsis();
void only_one_ellipsis_per_side();
void unknown_character_in_pattern();
void parentheses_inside_parentheses_are_not_allowed();
void closing_parenthesis_without_opening_one();
void opening_parenthesis_is_never_closed();
void invalid_axis_name_use_identifiers_not_starting_or_ending_with_underscore();
void axis_appears_twice_on_one_side();
void too_many_axes_on_one_side();
void anonymous_axis_of_length_zero();
void ellipsis_on_right_side_but_not_on_left();
void ellipsis_inside_parentheses_on_left_side();
void rearrange_takes_no_anonymous_axes_longer_than_one();
void axis_is_on_one_side_only_rearrange_needs_it_on_both();
void repeat_cannot_drop_an_input_axis_use_reduce();
void reduce_cannot_create_an_axis_use_repeat();
}  // namespace pattern_error

consteval bool check_pattern(std::string_view pattern, Op op) {
  const ParsedPattern p = parse_pattern(pattern, op);
  using namespace pattern_error;
  switch (p.problem) {
    case Problem::none: return true;
    case Problem::no_arrow: pattern_needs_one_arrow_between_input_and_output(); break;
    case Problem::several_arrows: pattern_has_more_than_one_arrow(); break;
    case Problem::stray_dot: dots_are_only_allowed_as_one_ellipsis(); break;
    case Problem::several_ellipses: only_one_ellipsis_per_side(); break;
    case Problem::unknown_character: unknown_character_in_pattern(); break;
    case Problem::nested_parentheses: parentheses_inside_parentheses_are_not_allowed(); break;
    case Problem::unbalanced_close: closing_parenthesis_without_opening_one(); break;
    case Problem::unbalanced_open: opening_parenthesis_is_never_closed(); break;
    case Problem::invalid_name: invalid_axis_name_use_identifiers_not_starting_or_ending_with_underscore(); break;
    case Problem::duplicate_axis: axis_appears_twice_on_one_side(); break;
    case Problem::too_many_axes: too_many_axes_on_one_side(); break;
    case Problem::zero_length_axis: anonymous_axis_of_length_zero(); break;
    case Problem::ellipsis_right_only: ellipsis_on_right_side_but_not_on_left(); break;
    case Problem::ellipsis_in_parens_left: ellipsis_inside_parentheses_on_left_side(); break;
    case Problem::anonymous_in_rearrange: rearrange_takes_no_anonymous_axes_longer_than_one(); break;
    case Problem::one_side_only: axis_is_on_one_side_only_rearrange_needs_it_on_both(); break;
    case Problem::left_only_in_repeat: repeat_cannot_drop_an_input_axis_use_reduce(); break;
    case Problem::right_only_in_reduce: reduce_cannot_create_an_axis_use_repeat(); break;
  }
  return false;
}

// Ranks of a pattern known at compile time; -1 where an ellipsis makes them depend on the input.
template <FixedString P>
inline constexpr int input_rank = [] {
  const auto p = parse_pattern(P.view(), Op::reduce);
  return p.left.has_ellipsis ? -1 : p.left.n_groups;
}();
template <FixedString P>
inline constexpr int output_rank = [] {
  const auto p = parse_pattern(P.view(), Op::reduce);
  return p.left.has_ellipsis ? -1 : p.right.n_groups;
}();

template <FixedString P>
inline void check_input_rank(std::int64_t rank, std::string_view op) {
  if constexpr (input_rank<P> >= 0) {
    if (rank != input_rank<P>)
      throw EinopsError(ditto::detail::cat(op, "<\"", P.view(), "\">: the left side has ", input_rank<P>,
                                           " axes but the input has rank ", rank));
  }
}

}  // namespace einops

template <FixedString P, class T>
inline Tensor<T> rearrange(const Tensor<T>& x, const AxisLengths& lengths = {}) {
  static_assert(einops::check_pattern(P.view(), einops::Op::rearrange));
  einops::check_input_rank<P>(x.dim(), "rearrange");
  return rearrange(x, P.view(), lengths);
}

template <FixedString P, class T>
inline Tensor<T> reduce(const Tensor<T>& x, std::string_view reduction, const AxisLengths& lengths = {}) {
  static_assert(einops::check_pattern(P.view(), einops::Op::reduce));
  einops::check_input_rank<P>(x.dim(), "reduce");
  return reduce(x, P.view(), reduction, lengths);
}

template <FixedString P, class T>
inline Tensor<T> repeat(const Tensor<T>& x, const AxisLengths& lengths = {}) {
  static_assert(einops::check_pattern(P.view(), einops::Op::repeat));
  einops::check_input_rank<P>(x.dim(), "repeat");
  return repeat(x, P.view(), lengths);
}

}  // namespace ditto
