#pragma once
// SPDX-License-Identifier: MIT
// The canonical vocabulary: a surjective map from raw token ids to canonical ids (spec section 1).

#include <engram/config.hpp>
#include <engram/error.hpp>
#include <engram/types.hpp>

#include <cstddef> // for size_t
#include <span>    // for span
#include <string>  // for to_string
#include <utility> // for move
#include <vector>  // for vector

ENGRAM_BEGIN_NAMESPACE

/// @brief Maps raw token ids `[0, V)` onto canonical ids `[0, V')`.
///
/// Tokens whose text is equivalent after normalisation share one canonical id; ids are numbered
/// in order of first appearance. Build one from a `lookup` tensor (`from_lookup`), from a
/// safetensors file (`<engram/io/vocab_io.hpp>`) or from a Hugging Face tokenizer.json
/// (`<engram/vocab/tokenizer_json.hpp>`).
class canonical_table {
public:
    canonical_table() = default;

    /// @brief Wraps an explicit table; `lookup[t]` is the canonical id of raw token `t`.
    /// @throws config_error if the table is empty, has a negative entry, or is not onto
    ///         `[0, max + 1)`.
    static canonical_table from_lookup(std::vector<token_id> lookup) {
        if (lookup.empty()) throw config_error("canonical table: lookup is empty");
        token_id max_id = -1;
        for (std::size_t t = 0; t < lookup.size(); ++t) {
            if (lookup[t] < 0)
                throw config_error("canonical table: lookup[" + std::to_string(t) + "] = " + std::to_string(lookup[t]) +
                                   " is negative");
            if (lookup[t] > max_id) max_id = lookup[t];
        }
        if (static_cast<std::size_t>(max_id) >= lookup.size())
            throw config_error("canonical table: lookup value " + std::to_string(max_id) +
                               " is not below the vocabulary size " + std::to_string(lookup.size()));
        // Canonical ids must be dense: every id below the size is the image of some raw id.
        std::vector<bool> seen(static_cast<std::size_t>(max_id) + 1, false);
        for (token_id v : lookup) seen[static_cast<std::size_t>(v)] = true;
        for (std::size_t c = 0; c < seen.size(); ++c)
            if (!seen[c])
                throw config_error("canonical table: canonical id " + std::to_string(c) +
                                   " is never produced (ids must be dense in [0, " + std::to_string(max_id + 1) + "))");
        canonical_table table;
        table.size_ = max_id + 1;
        table.lookup_ = std::move(lookup);
        return table;
    }

    /// @brief The identity table over `[0, vocab_size)` (no compression).
    static canonical_table identity(std::size_t vocab_size) {
        if (vocab_size == 0) throw config_error("canonical table: vocab_size is 0");
        std::vector<token_id> lookup(vocab_size);
        for (std::size_t t = 0; t < vocab_size; ++t) lookup[t] = static_cast<token_id>(t);
        canonical_table table;
        table.size_ = static_cast<token_id>(vocab_size);
        table.lookup_ = std::move(lookup);
        return table;
    }

    /// V: the number of raw token ids (including added tokens).
    [[nodiscard]] std::size_t vocab_size() const noexcept { return lookup_.size(); }
    /// V': the number of canonical ids.
    [[nodiscard]] token_id canonical_size() const noexcept { return size_; }
    [[nodiscard]] bool empty() const noexcept { return lookup_.empty(); }
    /// The raw -> canonical table, one entry per raw id.
    [[nodiscard]] std::span<const token_id> lookup() const noexcept { return lookup_; }

    /// @brief The canonical id of raw token `raw`.
    /// @throws input_error if `raw` is outside `[0, V)`.
    [[nodiscard]] token_id operator()(token_id raw) const {
        if (raw < 0 || static_cast<std::size_t>(raw) >= lookup_.size()) throw out_of_range(raw);
        return lookup_[static_cast<std::size_t>(raw)];
    }

    /// @brief Maps the raw pad id of a configuration to its canonical id.
    /// @throws config_error if `pad_id` is outside `[0, V)`.
    [[nodiscard]] token_id canonical_pad_id(token_id pad_id) const {
        if (pad_id < 0 || static_cast<std::size_t>(pad_id) >= lookup_.size())
            throw config_error("pad_id " + std::to_string(pad_id) + " is outside the vocabulary [0, " +
                               std::to_string(lookup_.size()) + ")");
        return lookup_[static_cast<std::size_t>(pad_id)];
    }

    /// @brief Maps a whole batch; `out` may alias `raw`.
    /// @throws input_error naming the first position whose id is outside `[0, V)`.
    void map(std::span<const token_id> raw, std::span<token_id> out) const {
        if (out.size() != raw.size())
            throw input_error("canonical table: output size " + std::to_string(out.size()) + " != input size " +
                              std::to_string(raw.size()));
        const auto v = static_cast<std::uint64_t>(lookup_.size());
        for (std::size_t i = 0; i < raw.size(); ++i) {
            // One unsigned compare rejects both negative and too-large ids.
            if (ENGRAM_UNLIKELY(static_cast<std::uint64_t>(raw[i]) >= v)) throw out_of_range(raw[i], i);
            out[i] = lookup_[static_cast<std::size_t>(raw[i])];
        }
    }

    friend bool operator==(const canonical_table&, const canonical_table&) = default;

private:
    [[nodiscard]] input_error out_of_range(token_id raw, std::size_t pos = std::size_t(-1)) const {
        std::string where = pos == std::size_t(-1) ? "" : " at position " + std::to_string(pos);
        return input_error("token id " + std::to_string(raw) + where + " is outside the vocabulary [0, " +
                           std::to_string(lookup_.size()) + ")");
    }

    std::vector<token_id> lookup_;
    token_id size_ = 0;
};

ENGRAM_END_NAMESPACE
