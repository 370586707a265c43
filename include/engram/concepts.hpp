#pragma once
// SPDX-License-Identifier: MIT
// One concept per policy kind: hash families and row storage.

#include <engram/config.hpp>
#include <engram/hash/layout.hpp>
#include <engram/types.hpp>

#include <concepts> // for same_as, constructible_from
#include <cstddef>  // for size_t
#include <cstdint>  // for int64_t
#include <span>     // for span

ENGRAM_BEGIN_NAMESPACE

/// @brief A way of turning an n-gram window into per-head row indices.
///
/// A family is built from a `layer_layout` and works in two steps, so that the reference costs
/// one multiply-XOR chain per order and one modulo per head:
/// - `f.template mix<N>(window)`: one value per order N. `window[0]` is the current canonical
///   id, `window[k]` the id k positions earlier (the canonical pad before the sequence start);
///   only `window[0..N)` may be read.
/// - `f.reduce(mix, head)`: the row of global head `head` (= order_index * K + j) inside that
///   head's table, in `[0, layout.primes[head])`.
/// Semantics the concept cannot check: both are pure functions of their arguments and the
/// layout, identical across processes and machines, and never fail (noexcept).
template <class F>
concept hash_family = std::copy_constructible<F> && std::constructible_from<F, const layer_layout&> &&
    requires(const F& f, const token_id* window, typename F::mix_type mix, std::size_t head) {
    { f.template mix<2>(window) }
    noexcept->std::same_as<typename F::mix_type>;
    { f.reduce(mix, head) }
    noexcept->std::same_as<std::int64_t>;
};

/// @brief A table of `rows()` rows of `dim()` values each, however and wherever they are stored.
///
/// `t.gather(ids, out)` decodes rows `ids[i]` to float into `out[i * dim, (i + 1) * dim)`; it
/// checks every id against `[0, rows())` before writing anything (input_error otherwise) and is
/// safe to call from several threads at once. Tables whose rows sit in addressable memory (dense,
/// mmap) also offer `encoded_row(i)`.
template <class T>
concept storage_table = requires(const T& t, std::span<const row_id> ids, std::span<float> out) {
    typename T::codec_type;
    { t.rows() } -> std::convertible_to<std::size_t>;
    { t.dim() } -> std::convertible_to<std::size_t>;
    t.gather(ids, out);
};

/// @brief A storage policy is a tag with a nested `table<Row>` template (cf. mdspan's
///        `layout_right::mapping<Extents>`), `Row` being a value type (float, bfloat16) or a
///        row codec; `storage_policy<S, Row>` checks that `S::table<Row>` is a `storage_table`.
template <class S, class Row>
concept storage_policy = storage_table<typename S::template table<Row>>;

ENGRAM_END_NAMESPACE
