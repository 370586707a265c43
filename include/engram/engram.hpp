#pragma once
// SPDX-License-Identifier: MIT
// Umbrella header for the core: vocabulary, seeding, layout, hashing, dense storage, gather.
// It includes no Eigen, JSON, utf8proc or CUDA; those live in their own optional headers.

#include <engram/concepts.hpp>
#include <engram/config.hpp>
#include <engram/error.hpp>
#include <engram/gather.hpp>
#include <engram/hash/hasher.hpp>
#include <engram/hash/layout.hpp>
#include <engram/hash/multiply_xor.hpp>
#include <engram/hash/primes.hpp>
#include <engram/hash/xxh3.hpp>
#include <engram/ngram/decode_state.hpp>
#include <engram/ngram/dispatch.hpp>
#include <engram/ngram/orders.hpp>
#include <engram/random/numpy.hpp>
#include <engram/storage/codec.hpp>
#include <engram/storage/cached.hpp>
#include <engram/storage/dense.hpp>
#include <engram/storage/quantized.hpp>
#include <engram/storage/sharded.hpp>
#include <engram/storage/row_types.hpp>
#include <engram/types.hpp>
#include <engram/version.hpp>
#include <engram/vocab/canonical_table.hpp>
