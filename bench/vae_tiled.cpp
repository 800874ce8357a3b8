// Peak memory and time of decoding one large image with the Stable Diffusion autoencoder, whole
// or in tiles (AutoencoderKL::decode_tiled): the tiled decode's activations stay those of one
// tile. Each run is a separate process, so its peak RSS is its own.
//
//   vae_tiled SIZE TILE_LATENT THREADS     (TILE_LATENT 0: decode whole)   e.g. vae_tiled 512 32 2
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>

#include <ditto/ditto.hpp>

using namespace ditto;

int main(int argc, char** argv) try {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s SIZE TILE_LATENT THREADS   (TILE_LATENT 0: whole)\n", argv[0]);
    return 2;
  }
  const std::int64_t size = std::atoll(argv[1]), tile = std::atoll(argv[2]);
  set_num_threads(std::atoi(argv[3]));
  if (size < 8 || size % 8 || tile < 0) throw ArgumentError("vae_tiled: SIZE must be a multiple of 8 and TILE_LATENT >= 0");
  models::VAEConfig c;
  c.ch_mult = {1, 2, 4, 4};
  models::AutoencoderKL<float> vae(c);
  Generator gen(0);
  for (auto& [n, t] : nn::named_parameters<float>(vae)) gen.fill_normal(*t, 0.0, 0.02);
  const auto z = gen.normal<float>({1, 4, size / 8, size / 8});
  const auto t0 = std::chrono::steady_clock::now();
  const auto img = tile ? vae.decode_tiled(z, tile, 0.25) : vae.decode(z);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  std::printf("decode %lldx%lld %s: %.1f s, peak RSS %.0f MB (weights %.0f MB, image %.0f MB)\n", static_cast<long long>(img.size(2)),
              static_cast<long long>(img.size(3)), tile ? ("tiles of " + std::to_string(tile) + " latent px").c_str() : "whole", s,
              ru.ru_maxrss / 1024.0, nn::count_parameters<float>(vae) * 4.0 / (1 << 20), img.numel() * 4.0 / (1 << 20));
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "%s\n", e.what());
  return 1;
}
