#pragma once
// SPDX-License-Identifier: MIT
// Umbrella header for the Engram layer (needs Eigen): policies, config, layer, decode state.

#include <engram/backend/host.hpp>
#include <engram/engram.hpp>
#include <engram/layer/config.hpp>
#include <engram/layer/dispatch.hpp>
#include <engram/layer/fusion.hpp>
#include <engram/layer/gate.hpp>
#include <engram/layer/layer.hpp>
