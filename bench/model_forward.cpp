// Model forward time and peak memory: the ditto column of the model tables in
// docs/performance.md.
//
//   model_forward MODEL BATCH THREADS [REPS]
//     MODEL: DiT-S/2 ... DiT-XL/8 (on 4 x 32 x 32 latents), U-ViT-M (imagenet64_uvit_mid, 64x64
//     pixels), ADM-64 (guided-diffusion's class-conditional 64x64 U-Net), Latte-S/2 ... Latte-XL/2
//     (16 frames of 4 x 32 x 32 latents: 16 x 256 tokens, class-conditional), SD-VAE-decode /
//     SD-VAE-encode (the Stable Diffusion autoencoder on 256x256 images / their 32x32 latents)
//
// Random weights (the speed does not depend on their values), labels and timesteps. Prints the
// median time of REPS forwards after one warm-up, the matrix-product FLOP/s it amounts to (every
// gemm counted during the warm-up; for DiT also checked against the formula below), and the
// peak resident memory next to the weights' size.
#define DITTO_COUNT_FLOPS  // before any ditto header: count every gemm's work
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include <ditto/ditto.hpp>

using namespace ditto;

// Multiply-adds x 2 of every matrix product in one forward (attention included).
static double dit_flops(const models::DiTConfig& c, std::int64_t B) {
  const double N = static_cast<double>(c.grid() * c.grid()), D = static_cast<double>(c.hidden_size);
  const double H = static_cast<double>(c.mlp_hidden()), P = static_cast<double>(c.patch_size * c.patch_size);
  // per block: qkv, q k^T, p v, proj, fc1 + fc2, adaLN_modulation (one row per image)
  const double block = 2 * N * D * 3 * D + 2 * 2 * N * N * D + 2 * N * D * D + 2 * 2 * N * D * H + 2 * D * 6 * D;
  const double per_image = c.depth * block + 2 * N * D * P * c.in_channels + 2 * N * D * P * c.out_channels() +
                           2 * (256 * D + D * D) + 2 * D * 2 * D;
  return per_image * static_cast<double>(B);
}

template <class Model>
static void randomize(Model& m) {
  Generator gen(0);
  for (auto& [n, t] : nn::named_parameters<float>(m))
    if (n != "pos_embed" && n != "temp_embed") gen.fill_normal(*t, 0.0, 0.02);
}

static double counted_flops = 0;  // of one call, from the gemm counter (DITTO_COUNT_FLOPS)

static double median_ms(int reps, const std::function<void()>& f) {
  const std::int64_t before = gemm_flops.load();
  f();  // warm-up: buffers, threads; and the work of one call counted
  counted_flops = static_cast<double>(gemm_flops.load() - before);
  std::vector<double> ms;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

int main(int argc, char** argv) try {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s MODEL BATCH THREADS [REPS]   (DiT-XL/2, U-ViT-M, ADM-64, Latte-XL/2)\n", argv[0]);
    return 2;
  }
  const std::string name = argv[1];
  const std::int64_t B = std::atoll(argv[2]);
  const int threads = std::atoi(argv[3]), reps = argc > 4 ? std::atoi(argv[4]) : 5;
  if (B < 1 || threads < 1 || reps < 1) throw ArgumentError("model_forward: BATCH, THREADS and REPS must be >= 1");
  set_num_threads(threads);
  Generator gen(1);
  Tensor<float> t({B});
  Tensor<std::int64_t> y({B});
  for (std::int64_t b = 0; b < B; ++b) t[b] = static_cast<float>(999 - 100 * b), y[b] = 7 * b;
  double ms = 0, weights = 0, gflops = 0;
  if (name.rfind("DiT-", 0) == 0) {
    const models::DiTConfig c = models::dit_config(name);
    models::DiT<float> m(c);
    randomize(m);
    weights = static_cast<double>(nn::count_parameters<float>(m));
    const auto x = gen.normal<float>({B, c.in_channels, c.input_size, c.input_size});
    ms = median_ms(reps, [&] { m.forward(x, t, y); });
    if (std::abs(counted_flops - dit_flops(c, B)) > 1e-9 * counted_flops)  // the hand count and the gemm count agree
      throw Error(detail::cat("model_forward: DiT FLOPs by formula ", dit_flops(c, B), " but counted ", counted_flops));
  } else if (name == "U-ViT-M") {
    models::UViT<float> m(models::uvit_config("imagenet64_uvit_mid"));
    randomize(m);
    weights = static_cast<double>(nn::count_parameters<float>(m));
    const auto x = gen.normal<float>({B, 3, 64, 64});
    ms = median_ms(reps, [&] { m.forward(x, t, &y); });
  } else if (name == "ADM-64") {
    models::UNetConfig c;
    c.image_size = 64, c.in_channels = 3, c.model_channels = 192, c.out_channels = 6, c.num_res_blocks = 3;
    c.attention_resolutions = {2, 4, 8}, c.channel_mult = {1, 2, 3, 4}, c.num_classes = 1000, c.num_head_channels = 64;
    c.use_scale_shift_norm = true, c.resblock_updown = true, c.use_new_attention_order = true;
    models::UNet<float> m(c);
    randomize(m);
    weights = static_cast<double>(nn::count_parameters<float>(m));
    const auto x = gen.normal<float>({B, 3, 64, 64});
    ms = median_ms(reps, [&] { m.forward(x, t, &y); });
  } else if (name.rfind("Latte-", 0) == 0) {
    const models::DiTConfig d = models::dit_config("DiT-" + name.substr(6));  // Latte's sizes are DiT's
    models::LatteConfig c;
    c.depth = d.depth, c.hidden_size = d.hidden_size, c.num_heads = d.num_heads, c.patch_size = d.patch_size;
    c.extras = 2, c.num_frames = 16;
    models::Latte<float> m(c);
    randomize(m);
    weights = static_cast<double>(nn::count_parameters<float>(m));
    const auto x = gen.normal<float>({B, 16, 4, 32, 32});
    ms = median_ms(reps, [&] { m.forward(x, t, &y); });
  } else if (name == "SD-VAE-decode" || name == "SD-VAE-encode") {
    models::VAEConfig c;  // Stable Diffusion's autoencoder (U-ViT's get_model)
    c.ch_mult = {1, 2, 4, 4};
    models::AutoencoderKL<float> m(c);
    randomize(m);
    weights = static_cast<double>(nn::count_parameters<float>(m));
    if (name == "SD-VAE-decode") {
      const auto z = gen.normal<float>({B, 4, 32, 32});
      ms = median_ms(reps, [&] { m.decode(z); });
    } else {
      const auto x = gen.uniform<float>({B, 3, 256, 256}, -1.0, 1.0);
      ms = median_ms(reps, [&] { m.encode(x); });
    }
  } else {
    throw ArgumentError("model_forward: unknown MODEL \"" + name + "\"; expected DiT-S/2 ... DiT-XL/8, U-ViT-M, ADM-64 or Latte-S/2 ... Latte-XL/2");
  }
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  gflops = counted_flops / ms / 1e6;
  std::printf("%-9s B=%lld threads=%d  %9.1f ms  %6.1f GFLOP/s", name.c_str(), static_cast<long long>(B), threads, ms, gflops);
  std::printf("  peak RSS %6.0f MB (weights %5.0f MB)  [%s]\n", ru.ru_maxrss / 1024.0, weights * 4 / (1 << 20), gemm_backend().c_str());
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "%s\n", e.what());
  return 1;
}
