// All of ditto's neural-network blocks (namespace ditto::nn).
#pragma once

#include "nn/activation.hpp"
#include "nn/adaln.hpp"
#include "nn/attention.hpp"
#include "nn/conv.hpp"
#include "nn/embedding.hpp"
#include "nn/linear.hpp"
#include "nn/loss.hpp"
#include "nn/mlp.hpp"
#include "nn/module.hpp"
#include "nn/norm.hpp"
#include "nn/patch.hpp"
#include "nn/resize.hpp"
#include "nn/rope.hpp"
