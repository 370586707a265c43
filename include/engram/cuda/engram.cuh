#pragma once
// SPDX-License-Identifier: MIT
// Umbrella header of the CUDA backend (nvcc only; CMake target engram::cuda): the backend tag,
// the multi-layer hash, device tables, the gather, the gate and fusion kernels, the cuBLAS
// projection and `engram::layer<Policies, cuda_backend>`.

#include <engram/cuda/fusion.cuh>
#include <engram/cuda/gather.cuh>
#include <engram/cuda/hash.cuh>
#include <engram/cuda/layer.cuh>
#include <engram/cuda/projection.cuh>
#include <engram/cuda/runtime.cuh>
#include <engram/cuda/table.cuh>
