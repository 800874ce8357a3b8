// ditto-train: trains a model of the library from one JSON config (docs/train.md).
//
//   ditto-train CONFIG.json --output runs/image            a new run
//   ditto-train CONFIG.json --output runs/image --resume   continues from runs/image/checkpoint.safetensors
//
// Every error is one line on stderr and a non-zero exit: 2 for a bad command line, 1 for
// anything found wrong while running (the config, the data, a checkpoint).
#include <cstdio>
#include <exception>
#include <string>

#include <CLI/CLI.hpp>

#include <ditto/io/file.hpp>
#include <ditto/io/json.hpp>
#include <ditto/pipelines/train.hpp>
#if defined(DITTO_WITH_MPI)
#include <ditto/pipelines/mpi.hpp>
#endif

int main(int argc, char** argv) {
#if defined(DITTO_WITH_MPI)
  // under mpirun: one rank per process, each a share of the global batch (docs/train.md)
  ditto::pipelines::MpiSession mpi(argc, argv);
  const ditto::pipelines::Communicator* comm = mpi.comm().size > 1 ? &mpi.comm() : nullptr;
  const bool quiet_rank = mpi.comm().rank != 0;
#else
  const ditto::pipelines::Communicator* comm = nullptr;
  const bool quiet_rank = false;
#endif
  CLI::App app{"ditto-train: trains a DiT, U-ViT, Latte (class-conditional diffusion), the autoencoder, or a ViT or ViViT (classifiers) from one JSON config;\n"
               "writes OUTPUT/checkpoint.safetensors, model.safetensors, loss.png and samples.png (docs/train.md)"};
  std::string config_path, output = "ditto-run";
  bool resume = false, quiet = false;
  long long steps = 0;
  int threads = 0;
  app.add_option("config", config_path, "the run's JSON config: model, model_config, data, train, diffusion")->required();
  app.add_option("--output,-o", output, "the folder of the run's files (made when missing)")->capture_default_str();
  app.add_flag("--resume", resume, "continue from OUTPUT/checkpoint.safetensors, bit for bit");
  app.add_option("--steps", steps, "train until this step (overrides train.steps; a resume may extend a run)")->check(CLI::Range(1LL, 100000000LL));
  app.add_option("--threads", threads, "threads (overrides train.threads)")->check(CLI::Range(1, 4096));
  app.add_flag("--quiet,-q", quiet, "no progress bar or log lines");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return quiet_rank ? 0 : app.exit(e);
  } catch (const CLI::ParseError& e) {
    if (!quiet_rank) std::fprintf(stderr, "ditto-train: %s (see --help)\n", e.what());
    return 2;  // (every rank parses the same command line, so every rank stops here)
  }
  try {
    const std::string what = "ditto-train: config \"" + config_path + "\"";
    nlohmann::json j = ditto::parse_json(ditto::read_file(config_path, what, 16 << 20), what);
    if (steps > 0 && j.is_object()) j["train"]["steps"] = steps;
    if (threads > 0 && j.is_object()) j["train"]["threads"] = threads;
    const auto rc = ditto::pipelines::RunConfig::from_json(j);
    const auto r = ditto::pipelines::train(rc, {.output = output, .resume = resume, .progress = !quiet, .comm = comm});
    if (quiet_rank) return 0;
    std::printf("ditto-train: %lld steps in %.1f s, final loss %.5f", static_cast<long long>(r.steps), r.seconds,
                r.losses.empty() ? 0.0 : static_cast<double>(r.losses.back()));
    if (r.test_accuracy >= 0) std::printf(", test accuracy %.4f", r.test_accuracy);
    if (r.test_reconstruction >= 0) std::printf(", test reconstruction %.4f", r.test_reconstruction);
    std::printf("; wrote %s/{checkpoint,model}.safetensors, %s/loss.png%s\n", output.c_str(), output.c_str(),
                rc.is_diffusion() || rc.model == "vae" ? (", " + output + "/samples.png").c_str() : "");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
#if defined(DITTO_WITH_MPI)
    if (mpi.comm().size > 1) mpi.abort(1);  // the other ranks may be waiting in a collective
#endif
    return 1;
  }
}
