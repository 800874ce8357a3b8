// JSON from outside (configs, safetensors headers): nesting is bounded before the parser sees
// it, and a value quoted in an error message is cut short, so a hostile file can neither
// exhaust the stack (printing a value is recursive) nor flood a message with megabytes.
//
//   nlohmann::json j = parse_json(text, "--config \"dit.json\"");   // IoError if invalid or too deep
//   throw ArgumentError("... got " + brief_json(j["depth"]));       // at most about 80 characters
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "../core/error.hpp"

namespace ditto {

// How deep arrays and objects nest in `text` (strings skipped). A linear scan, no recursion.
inline int json_nesting_depth(std::string_view text) {
  int depth = 0, max_depth = 0;
  bool in_str = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_str) {
      if (c == '\\') ++i;
      else if (c == '"') in_str = false;
    } else if (c == '"') {
      in_str = true;
    } else if (c == '{' || c == '[') {
      if (++depth > max_depth) max_depth = depth;
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return max_depth;
}

// Parses `text`; IoError (starting with `what`) for invalid JSON or nesting past `max_depth`
// (configs nest 2 or 3 levels; 64 leaves room for anything a constructor takes).
inline nlohmann::json parse_json(std::string_view text, const std::string& what, int max_depth = 64) {
  const int depth = json_nesting_depth(text);
  if (depth > max_depth)
    throw IoError(detail::cat(what, ": the JSON nests ", depth, " levels deep; at most ", max_depth, " are accepted"));
  try {
    return nlohmann::json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::exception& e) {
    throw IoError(detail::cat(what, ": not valid JSON: ", e.what()));
  }
}

namespace detail {
// (replace: a string cut inside a UTF-8 sequence must not make dump() throw)
inline std::string json_text(const nlohmann::json& v) { return v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace); }

inline void brief_json_into(const nlohmann::json& v, std::string& out, std::size_t budget, int depth) {
  if (out.size() >= budget) return;
  if (v.is_string()) {
    const auto& s = v.get_ref<const std::string&>();
    const std::size_t room = budget > out.size() + 2 ? budget - out.size() - 2 : 0;
    if (s.size() <= room) out += json_text(s);
    else out += json_text(s.substr(0, room)) + "...";
    return;
  }
  if (!v.is_structured()) {
    out += json_text(v);
    return;
  }
  const bool obj = v.is_object();
  if (depth >= 4) {
    out += obj ? "{...}" : "[...]";
    return;
  }
  out += obj ? '{' : '[';
  bool first = true;
  for (auto it = v.begin(); it != v.end(); ++it) {
    if (out.size() >= budget) {
      out += ", ...";
      break;
    }
    if (!first) out += ", ";
    first = false;
    if (obj) {  // a key is cut like a string value
      brief_json_into(nlohmann::json(it.key()), out, budget, depth + 1);
      out += ": ";
    }
    brief_json_into(*it, out, budget, depth + 1);
  }
  out += obj ? '}' : ']';
}
}  // namespace detail

// `v` as JSON text, cut to about `budget` characters ("[1, 2, ...]", "\"abc...\"") for messages.
inline std::string brief_json(const nlohmann::json& v, std::size_t budget = 80) {
  std::string out;
  detail::brief_json_into(v, out, budget, 0);
  return out;
}

}  // namespace ditto
