#pragma once
// SPDX-License-Identifier: MIT
// The declaration of `engram::layer`: one template for every backend, chosen by the policies'
// `backend_type`. The host layer (engram/layer/layer.hpp) and the CUDA layer
// (engram/cuda/layer.cuh) are its specialisations.

#include <engram/config.hpp>

ENGRAM_BEGIN_NAMESPACE

struct layer_policies;

namespace detail {
template <class>
inline constexpr bool backend_header_missing = false;
} // namespace detail

/// @brief One Engram layer, composed from `Policies` (see `layer_policies`), run by the backend
///        `Policies::backend_type` names: `host_backend` (engram/layer/layer.hpp) or
///        `cuda_backend` (engram/cuda/layer.cuh, nvcc only). A policy tag is all that changes.
template <class Policies = layer_policies, class Backend = typename Policies::backend_type>
class layer {
    static_assert(detail::backend_header_missing<Backend>,
                  "engram::layer: no layer for this backend; include its header (cuda_backend: "
                  "<engram/cuda/layer.cuh>, compiled by nvcc)");
};

ENGRAM_END_NAMESPACE
