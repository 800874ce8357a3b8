// ditto: the building blocks of Sora-style video diffusion, header-only C++20.
// Including this header brings in everything; each concept also has its own header.
#pragma once

#include "core/error.hpp"
#include "core/matmul.hpp"
#include "core/rng.hpp"
#include "core/tensor.hpp"
#include "core/threading.hpp"
#include "core/version.hpp"
#include "einops.hpp"
#include "io/image.hpp"
#include "io/safetensors.hpp"
#include "nn.hpp"
#include "diffusion/schedule.hpp"
#include "diffusion/gaussian.hpp"
#include "diffusion/sampler.hpp"
#include "diffusion/guidance.hpp"
#include "diffusion/losses.hpp"
#include "diffusion/dpm_solver.hpp"
#include "diffusion/flow.hpp"
#include "models/config.hpp"
#include "models/dit.hpp"
