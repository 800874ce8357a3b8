// ditto-forward: runs one forward pass of a ported model on upstream weights and inputs, so
// anyone can check a port against the upstream code (docs/forward.md has the contract).
//
//   ditto-forward --model dit --config CONFIG.json --weights W.safetensors
//                 --inputs IN.safetensors --output OUT.safetensors [--cfg-scale S] [--threads N] [--seed N] [--trace]
//
// Every error is one line on stderr and a non-zero exit: 2 for a bad command line, 1 for
// anything found wrong while running (config, weights, inputs).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <map>
#include <optional>
#include <set>
#include <string>

#include <ditto/core/threading.hpp>
#include <ditto/io/file.hpp>
#include <ditto/io/json.hpp>
#include <ditto/io/safetensors.hpp>
#include <ditto/models/runner.hpp>

namespace {
const char* kUsage =
    "usage: ditto-forward --model {vit,vivit,dit,uvit,unet,latte,vae-encode,vae-decode} --config CONFIG.json\n"
    "                     --weights W.safetensors --inputs IN.safetensors --output OUT.safetensors\n"
    "                     [--cfg-scale S] [--threads N] [--seed N] [--trace] [--backward]\n"
    "  --backward: the inputs also hold grad_out (out's shape; vae-encode: the posterior mean's); OUT adds\n"
    "              grad.<parameter> and grad.<input>, the gradients of sum(out * grad_out), for every model\n"
    "              (no guidance; docs/forward.md)\n";

struct UsageError : ditto::ArgumentError {
  using ditto::ArgumentError::ArgumentError;
};

double parse_number(const std::string& flag, const std::string& text) {
  std::size_t used = 0;
  double v = 0;
  try {
    v = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size() || text.empty() || !std::isfinite(v))
    throw UsageError(ditto::detail::cat(flag, " expects a finite number, got \"", text, "\""));
  return v;
}
}  // namespace

int main(int argc, char** argv) {
  try {
    std::map<std::string, std::string> args;
    bool trace = false, backward = false;
    const std::set<std::string> valued = {"--model", "--config", "--weights", "--inputs", "--output", "--cfg-scale", "--threads", "--seed"};
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      if (a == "--help" || a == "-h") {
        std::fputs(kUsage, stdout);
        return 0;
      }
      if (a == "--trace") {
        trace = true;
        continue;
      }
      if (a == "--backward") {
        backward = true;
        continue;
      }
      if (!valued.count(a)) throw UsageError(ditto::detail::cat("unknown argument \"", a, "\""));
      if (i + 1 >= argc) throw UsageError(ditto::detail::cat(a, " needs a value"));
      if (args.count(a)) throw UsageError(ditto::detail::cat(a, " is given twice"));
      args[a] = argv[++i];
    }
    for (const char* need : {"--model", "--config", "--weights", "--inputs", "--output"})
      if (!args.count(need)) throw UsageError(ditto::detail::cat("missing ", need));
    if (args.count("--threads")) {
      const double n = parse_number("--threads", args["--threads"]);
      if (n < 1 || n != std::floor(n) || n > 4096)
        throw UsageError(ditto::detail::cat("--threads expects a whole number from 1 to 4096, got \"", args["--threads"], "\""));
      ditto::set_num_threads(static_cast<int>(n));
    }
    ditto::models::ForwardRequest r;
    r.model = args["--model"];
    if (args.count("--cfg-scale")) r.cfg_scale = parse_number("--cfg-scale", args["--cfg-scale"]);
    r.trace = trace;
    r.backward = backward;
    if (args.count("--seed")) {
      const std::string& text = args["--seed"];
      if (text.empty() || text.size() > 19 || text.find_first_not_of("0123456789") != std::string::npos)
        throw UsageError(ditto::detail::cat("--seed expects a whole number from 0 to 10^19 - 1, got \"", text, "\""));
      r.seed = std::stoull(text);
    }
    const std::string config_what = ditto::detail::cat("--config \"", args["--config"], "\"");
    r.config = ditto::parse_json(ditto::read_file(args["--config"], config_what, 16 << 20), config_what);
    const ditto::SafetensorsFile weights(args["--weights"]), inputs(args["--inputs"]);
    r.weights = &weights;
    r.inputs = &inputs;
    const auto outputs = ditto::models::run_forward(r);
    ditto::save_safetensors(args["--output"], outputs);
    return 0;
  } catch (const UsageError& e) {
    std::fprintf(stderr, "ditto-forward: %s\n%s", e.what(), kUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ditto-forward: %s\n", e.what());
    return 1;
  }
}
