#pragma once
// SPDX-License-Identifier: MIT
// Versioned table files: a layer's embedding rows (any codec, optionally sharded) plus a manifest
// that pins the configuration, layout and vocabulary they belong to; streaming atomic writer,
// cheaply validated memory-mapped reader, full content verification.

#include <engram/config.hpp>
#include <engram/detail/xxhash.hpp>
#include <engram/error.hpp>
#include <engram/hash/layout.hpp>
#include <engram/io/config_json.hpp>
#include <engram/io/safetensors.hpp>
#include <engram/io/vocab_io.hpp>
#include <engram/layer/config.hpp>
#include <engram/storage/codec.hpp>
#include <engram/storage/mmap.hpp>
#include <engram/storage/quantized.hpp>
#include <engram/storage/sharded.hpp>
#include <engram/vocab/canonical_table.hpp>

#include <nlohmann/json.hpp> // for json (the manifest)

#include <fcntl.h>    // for open, O_RDONLY, O_DIRECTORY, O_CLOEXEC
#include <sys/mman.h> // for madvise
#include <sys/stat.h> // for fchmod
#include <unistd.h>   // for write, pwrite, fsync, close, unlink, sysconf

#include <algorithm>    // for min, max, find, sort
#include <array>        // for array
#include <cerrno>       // for errno, EINTR, EINVAL
#include <chrono>       // for steady_clock (table ids)
#include <cmath>        // for isfinite
#include <cstddef>      // for byte, size_t
#include <cstdint>      // for int64_t, uint64_t, uintptr_t
#include <cstdio>       // for rename, snprintf
#include <cstdlib>      // for mkstemp
#include <cstring>      // for memcpy
#include <filesystem>   // for path
#include <functional>   // for function
#include <map>          // for map
#include <optional>     // for optional
#include <random>       // for random_device
#include <span>         // for span
#include <string>       // for string, to_string
#include <string_view>  // for string_view
#include <system_error> // for error_code
#include <utility>      // for move, exchange
#include <vector>       // for vector

ENGRAM_BEGIN_NAMESPACE

/// @file
/// # The table file format, version 1
///
/// A table file holds the embedding rows of one Engram layer (spec section 5: `sum(p)` rows of
/// `d` values, head h starting at row `offsets[h]`) in a row codec, as one or more safetensors
/// files, together with everything needed to check that they fit a model.
///
/// **Manifest file** (the path the user names, e.g. `TABLE.safetensors`): a safetensors file
/// whose `__metadata__` has the key `engram_table`, a JSON object:
///
/// | field | type | meaning |
/// | --- | --- | --- |
/// | `format` | string | always `"engram-table"` |
/// | `version` | integer | 1; readers refuse other versions |
/// | `table_id` | string | 16 hex digits drawn at random for each pack; every shard repeats it |
/// | `config` | object | the layer configuration (`to_json(layer_config)`) |
/// | `layer_id`, `layer_ids` | integer, [integer] | copies of `config.layer_id` / `config.layer_ids` |
/// | `primes`, `offsets` | [integer] | the table size and first row of each head (spec section 3) |
/// | `multipliers` | [integer] or null | the hash multipliers m_0..m_{N-1}; null when unknown (no vocabulary, none in
/// the source) | | `vocab_size`, `canonical_vocab_size` | integer or null | V and V' of the canonical vocabulary; null
/// without one | | `vocab_checksum` | string or null | XXH3-64 (16 hex digits) of the bytes of tensor `lookup` | |
/// `codec` | string | `f32`, `bf16`, `f16`, `fp8` or `int8` (see `<engram/storage/quantized.hpp>`) | | `rows`, `dim`,
/// `row_bytes` | integer | `sum(primes)`, `d`, stored bytes per row (`codec::row_bytes(d)`) | | `shards` | [object] |
/// in row order: `file` (a file name in the manifest's directory), `first_row`, `rows`, `checksum` (XXH3-64, 16 hex
/// digits, of the shard's row bytes) |
///
/// Tensors of the manifest file: `lookup` (I64 [V], the canonical table) when there is a
/// vocabulary. With one shard the rows live in the manifest file itself (`shards[0].file` is
/// its own name).
///
/// **Rows**: tensor `rows` of each shard file. f32, bf16 and f16 rows use the native dtype
/// (F32 / BF16 / F16, shape [rows, dim]); the other codecs store U8 [rows, row_bytes]. Shard
/// files of a multi-shard table are named `STEM.shard{k}.EXT` and carry the metadata key
/// `engram_table_shard`: `{format: "engram-table-shard", version, table_id, index, shards,
/// first_row, rows, codec, dim}`. engram's writer pads the JSON header with spaces so that the
/// rows start on a 4096-byte boundary of the file, and puts `lookup` (8-byte aligned) first.
///
/// **Opening** (`table_file::open`) checks what is cheap: the manifest's fields and types, the
/// version, the layout (offsets are the running sum of the primes, the primes are the ones
/// the configuration gives, `rows`, `dim`, `row_bytes` agree with them and the codec, the
/// multipliers are the reference ones or valid explicit ones), the vocabulary (its checksum,
/// V', the pad id), and every shard: the file exists, is a valid safetensors file, holds
/// `rows` of the right dtype and shape, and belongs to this table (same `table_id`, index and
/// row range). **Verifying** (`table_file::verify`, `engram verify`) also hashes every row byte.
///
/// **Durability**: every file is written to a temporary `.NAME.tmp.XXXXXX` in the target's
/// directory, fsynced, and renamed over the target; the directory is fsynced after the last
/// rename. All shards are written and fsynced before the manifest; they are renamed into place
/// first and the manifest last. When the shard renames replace the shard files of an older
/// table at the same path, the old manifest is removed (and the directory fsynced) before them,
/// so a reader finds the old table, the new table or none, never an old manifest over new
/// shards (were one to appear anyway, e.g. from files copied by hand, `table_id` rejects it).
/// An error (or an exception from the progress callback) removes every temporary and every
/// shard this pack had already renamed, so an interrupted pack leaves no table behind. A killed
/// process can leave hidden `.NAME.tmp.*` files, never a file with the target's name:
/// `table_temporaries` lists them (`engram pack` removes those of its target before it starts,
/// `engram verify` reports them); they are safe to delete when no pack of the table is running.
///
/// **Manifest checksum**: the field `manifest_checksum` (16 hex digits) is XXH3-64 of the
/// manifest JSON without that field, as nlohmann/json dumps it (keys sorted, no spaces). It
/// catches a corrupted value that is valid on its own (an epsilon, the table id). Manifests
/// written before the field existed have none and are read without the check. Unknown fields
/// (in the manifest, a shard entry or a shard's metadata) are rejected.

namespace detail {

/// 16 lowercase hex digits.
inline std::string hex64(std::uint64_t v) {
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
    return std::string(buf, 16);
}

/// Parses exactly 16 hex digits (either case).
inline bool parse_hex64(std::string_view s, std::uint64_t& out) noexcept {
    if (s.size() != 16) return false;
    std::uint64_t v = 0;
    for (char c : s) {
        unsigned d = 0;
        if (c >= '0' && c <= '9')
            d = static_cast<unsigned>(c - '0');
        else if (c >= 'a' && c <= 'f')
            d = static_cast<unsigned>(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            d = static_cast<unsigned>(c - 'A' + 10);
        else
            return false;
        v = (v << 4) | d;
    }
    out = v;
    return true;
}

/// Incremental XXH3-64 (the state lives on the stack; xxHash is inlined).
class xxh3_stream {
public:
    xxh3_stream() noexcept { XXH3_64bits_reset(&state_); }
    void update(std::span<const std::byte> bytes) noexcept { XXH3_64bits_update(&state_, bytes.data(), bytes.size()); }
    [[nodiscard]] std::uint64_t digest() const noexcept { return XXH3_64bits_digest(&state_); }

private:
    XXH3_state_t state_;
};

inline std::uint64_t xxh3_of(std::span<const std::byte> bytes) noexcept {
    return XXH3_64bits(bytes.data(), bytes.size());
}

/// What the writer and reader need to know of a codec chosen by name at run time.
struct codec_info {
    std::string name;
    dtype stored = dtype::u8; ///< F32 / BF16 / F16 for the native codecs, U8 otherwise
    std::size_t (*row_bytes)(std::size_t) noexcept = nullptr;
    void (*check_dim)(std::size_t) = nullptr;
    void (*encode)(const float*, std::byte*, std::size_t) noexcept = nullptr;
};

/// @throws config_error for an unknown codec name.
inline codec_info codec_info_for(std::string_view name) {
    return dispatch_codec(name, [](auto c) {
        using C = decltype(c);
        codec_info info;
        info.name = std::string(C::name);
        info.stored = C::name == "f32"    ? dtype::f32
                      : C::name == "bf16" ? dtype::bf16
                      : C::name == "f16"  ? dtype::f16
                                          : dtype::u8;
        info.row_bytes = +[](std::size_t d) noexcept { return C::row_bytes(d); };
        info.check_dim = +[](std::size_t d) { C::check_dim(d); };
        info.encode = +[](const float* in, std::byte* out, std::size_t d) noexcept { C::encode(in, out, d); };
        return info;
    });
}

/// Drops the whole pages inside `bytes` from this process's mapping (`MADV_DONTNEED`) once
/// they have been read through: resident memory stays bounded while streaming a large file
/// (read-only file pages: the page cache keeps the data).
inline void drop_pages(std::span<const std::byte> bytes) noexcept {
    const long sys = ::sysconf(_SC_PAGESIZE);
    const auto page = static_cast<std::uintptr_t>(sys > 0 ? sys : 4096);
    auto begin = reinterpret_cast<std::uintptr_t>(bytes.data());
    auto end = reinterpret_cast<std::uintptr_t>(bytes.data() + bytes.size());
    begin = (begin + page - 1) / page * page; // only pages wholly inside: neighbours may be in use
    end = end / page * page;
    if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

/// The safetensors shape of `rows` rows stored with `codec`.
inline std::vector<std::int64_t> stored_shape(const codec_info& codec, std::uint64_t rows, std::uint64_t dim) {
    const std::uint64_t width = codec.stored == dtype::u8 ? codec.row_bytes(static_cast<std::size_t>(dim)) : dim;
    return {static_cast<std::int64_t>(rows), static_cast<std::int64_t>(width)};
}

/// A random 64-bit id (distinct per pack, not secret).
inline std::uint64_t random_table_id() {
    std::uint64_t v = 0;
    try {
        std::random_device rd;
        v = (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
    } catch (...) { // no entropy source: fall back on the clock
    }
    return v ^ static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()) *
                   0x9E3779B97F4A7C15ull;
}

/// The name of shard k of a table whose manifest is `manifest`: `STEM.shard{k}.EXT`.
inline std::string shard_file_name(const std::filesystem::path& manifest, std::size_t k) {
    return manifest.stem().string() + ".shard" + std::to_string(k) + manifest.extension().string();
}

/// A plain file name: no directory part, not "." or "..".
inline bool plain_file_name(const std::string& name) {
    return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
           name.find('\0') == std::string::npos;
}

inline std::filesystem::path parent_dir(const std::filesystem::path& p) {
    return p.has_parent_path() ? p.parent_path() : std::filesystem::path(".");
}

/// Checked reads of manifest fields; every error names the file and the field.
struct manifest_fields {
    const nlohmann::json& j;
    std::string where;

    [[noreturn]] void fail(std::string_view key, const std::string& what) const {
        throw format_error(where + ": manifest field '" + std::string(key) + "' " + what);
    }
    const nlohmann::json& field(std::string_view key) const {
        const auto it = j.find(key);
        if (it == j.end()) fail(key, "is missing");
        return *it;
    }
    bool is_null(std::string_view key) const { return field(key).is_null(); }
    /// Rejects a key outside `allowed` (a misspelt or foreign field is corruption).
    void only(std::span<const std::string_view> allowed) const {
        for (const auto& item : j.items())
            if (std::find(allowed.begin(), allowed.end(), item.key()) == allowed.end())
                throw format_error(where + ": unknown field " + quoted_excerpt(item.key()) +
                                   " (not part of format version 1)");
    }
    std::uint64_t u64(std::string_view key) const {
        const auto& v = field(key);
        if (!v.is_number_integer()) fail(key, "must be an integer, got " + json_excerpt(v));
        if (!v.is_number_unsigned() && v.get<std::int64_t>() < 0)
            fail(key, "must be non-negative, got " + json_excerpt(v));
        return v.get<std::uint64_t>();
    }
    std::int64_t i64(std::string_view key) const {
        const auto& v = field(key);
        if (!v.is_number_integer() ||
            (v.is_number_unsigned() && v.get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX)))
            fail(key, "must be a 64-bit integer, got " + json_excerpt(v));
        return v.get<std::int64_t>();
    }
    std::string str(std::string_view key) const {
        const auto& v = field(key);
        if (!v.is_string()) fail(key, "must be a string, got " + json_excerpt(v));
        return v.get<std::string>();
    }
    std::uint64_t hex(std::string_view key) const {
        const std::string s = str(key);
        std::uint64_t out = 0;
        if (!parse_hex64(s, out)) fail(key, "must be 16 hex digits, got " + quoted_excerpt(s));
        return out;
    }
    std::vector<std::int64_t> i64_list(std::string_view key) const {
        const auto& v = field(key);
        if (!v.is_array()) fail(key, "must be a list of integers, got " + json_excerpt(v));
        std::vector<std::int64_t> out;
        out.reserve(v.size());
        for (std::size_t i = 0; i < v.size(); ++i) {
            const auto& e = v[i];
            if (!e.is_number_integer() ||
                (e.is_number_unsigned() && e.get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX)))
                fail(key, "[" + std::to_string(i) + "] must be a 64-bit integer, got " + json_excerpt(e));
            out.push_back(e.get<std::int64_t>());
        }
        return out;
    }

private:
    static std::string json_excerpt(const nlohmann::json& v) { return detail::json_excerpt(v); }
};

} // namespace detail

/// @brief The parsed `engram_table` manifest of a table file (see the format notes above).
struct table_manifest {
    static constexpr std::string_view format_name = "engram-table";
    static constexpr std::string_view shard_format_name = "engram-table-shard";
    static constexpr std::int64_t current_version = 1;
    /// The metadata keys of the manifest and of shard files.
    static constexpr std::string_view metadata_key = "engram_table";
    static constexpr std::string_view shard_metadata_key = "engram_table_shard";
    /// The manifest field holding XXH3-64 of the manifest's other fields (see `check_checksum`).
    static constexpr std::string_view checksum_key = "manifest_checksum";

    /// One shard: rows [first_row, first_row + rows) in tensor `rows` of `file`.
    struct shard {
        std::string file;
        std::uint64_t first_row = 0, rows = 0;
        std::uint64_t checksum = 0; ///< XXH3-64 of the shard's row bytes
        friend bool operator==(const shard&, const shard&) = default;
    };

    std::int64_t version = current_version;
    std::uint64_t table_id = 0;
    layer_config config;
    std::vector<std::int64_t> primes, offsets;
    std::optional<std::vector<std::int64_t>> multipliers;
    std::optional<std::int64_t> vocab_size, canonical_vocab_size;
    std::optional<std::uint64_t> vocab_checksum;
    std::string codec = "f32";
    std::uint64_t rows = 0, dim = 0, row_bytes = 0;
    std::vector<shard> shards;

    /// @brief The manifest as stored (keys sorted, config as an object, checksums as hex).
    [[nodiscard]] nlohmann::json to_json() const {
        nlohmann::json j;
        j["format"] = format_name;
        j["version"] = version;
        j["table_id"] = detail::hex64(table_id);
        j["config"] = engram::to_json(config);
        j["layer_id"] = config.layer_id;
        j["layer_ids"] = config.hash.layer_ids;
        j["primes"] = primes;
        j["offsets"] = offsets;
        j["multipliers"] = multipliers ? nlohmann::json(*multipliers) : nlohmann::json(nullptr);
        j["vocab_size"] = vocab_size ? nlohmann::json(*vocab_size) : nlohmann::json(nullptr);
        j["canonical_vocab_size"] =
            canonical_vocab_size ? nlohmann::json(*canonical_vocab_size) : nlohmann::json(nullptr);
        j["vocab_checksum"] = vocab_checksum ? nlohmann::json(detail::hex64(*vocab_checksum)) : nlohmann::json(nullptr);
        j["codec"] = codec;
        j["rows"] = rows;
        j["dim"] = dim;
        j["row_bytes"] = row_bytes;
        j["shards"] = nlohmann::json::array();
        for (const auto& s : shards)
            j["shards"].push_back({{"file", s.file},
                                   {"first_row", s.first_row},
                                   {"rows", s.rows},
                                   {"checksum", detail::hex64(s.checksum)}});
        return j;
    }

    /// @brief XXH3-64 of the manifest JSON `j` without its `manifest_checksum` field, as
    ///        nlohmann/json dumps it (keys sorted, no spaces): what `manifest_checksum` holds.
    [[nodiscard]] static std::uint64_t digest(nlohmann::json j) {
        if (j.is_object()) j.erase(std::string(checksum_key));
        const std::string text = j.dump();
        return detail::xxh3_of(std::as_bytes(std::span<const char>(text)));
    }

    /// @brief Checks the manifest's `manifest_checksum` against its other fields (a flipped
    ///        digit of a value that is valid on its own, such as an epsilon or the table id).
    ///        Manifests written before the field existed have none and pass.
    /// @throws format_error naming `where` and both checksums.
    static void check_checksum(const nlohmann::json& j, const std::string& where) {
        const auto it = j.find(checksum_key);
        if (it == j.end()) return;
        std::uint64_t stored = 0;
        if (!it->is_string() || !detail::parse_hex64(it->get_ref<const std::string&>(), stored))
            throw format_error(where + ": manifest field '" + std::string(checksum_key) + "' must be 16 hex digits");
        const std::uint64_t got = digest(j);
        if (got != stored)
            throw format_error(where + ": the manifest hashes to " + detail::hex64(got) + ", its " +
                               std::string(checksum_key) + " is " + detail::hex64(stored) +
                               " (the manifest text is corrupt)");
    }

    /// @brief Reads a manifest, checking every field's presence and type, the format and the
    ///        version (consistency between fields is `validate`'s job; the checksum is
    ///        `check_checksum`'s).
    /// @throws format_error naming `where` and the field; unsupported_error for a newer version.
    static table_manifest from_json(const nlohmann::json& j, const std::string& where) {
        if (!j.is_object())
            throw format_error(where + ": the manifest is a JSON " + std::string(j.type_name()) +
                               ", expected an object");
        const detail::manifest_fields f{j, where};
        table_manifest m;
        static constexpr std::string_view known[] = {"format",
                                                     "version",
                                                     "table_id",
                                                     "config",
                                                     "layer_id",
                                                     "layer_ids",
                                                     "primes",
                                                     "offsets",
                                                     "multipliers",
                                                     "vocab_size",
                                                     "canonical_vocab_size",
                                                     "vocab_checksum",
                                                     "codec",
                                                     "rows",
                                                     "dim",
                                                     "row_bytes",
                                                     "shards",
                                                     checksum_key};
        f.only(known);
        if (f.str("format") != format_name)
            f.fail("format",
                   "is " + detail::quoted_excerpt(f.str("format")) + ", expected '" + std::string(format_name) + "'");
        m.version = f.i64("version");
        if (m.version > current_version)
            throw unsupported_error(where + ": table file version " + std::to_string(m.version) +
                                    " is newer than this engram reads (version " + std::to_string(current_version) +
                                    "); upgrade engram");
        if (m.version != current_version)
            f.fail("version", "is " + std::to_string(m.version) + "; this engram reads version " +
                                  std::to_string(current_version));
        m.table_id = f.hex("table_id");
        const auto& cfg = f.field("config");
        if (!cfg.is_object()) f.fail("config", "must be a JSON object");
        try {
            m.config = layer_config_from_json(cfg);
        } catch (const format_error& e) {
            throw format_error(where + ": manifest field 'config': " + e.what());
        } catch (const config_error& e) {
            throw format_error(where + ": manifest field 'config': " + e.what());
        }
        if (f.i64("layer_id") != m.config.layer_id)
            f.fail("layer_id", "= " + std::to_string(f.i64("layer_id")) +
                                   " differs from config.layer_id = " + std::to_string(m.config.layer_id));
        if (f.i64_list("layer_ids") != m.config.hash.layer_ids) f.fail("layer_ids", "differs from config.layer_ids");
        m.primes = f.i64_list("primes");
        m.offsets = f.i64_list("offsets");
        if (!f.is_null("multipliers")) m.multipliers = f.i64_list("multipliers");
        if (!f.is_null("vocab_size")) m.vocab_size = f.i64("vocab_size");
        if (!f.is_null("canonical_vocab_size")) m.canonical_vocab_size = f.i64("canonical_vocab_size");
        if (!f.is_null("vocab_checksum")) m.vocab_checksum = f.hex("vocab_checksum");
        m.codec = f.str("codec");
        m.rows = f.u64("rows");
        m.dim = f.u64("dim");
        m.row_bytes = f.u64("row_bytes");
        if (j.contains(checksum_key)) (void)f.hex(checksum_key);
        const auto& shards_json = f.field("shards");
        if (!shards_json.is_array() || shards_json.empty())
            f.fail("shards", "must be a non-empty list of shard objects");
        for (std::size_t k = 0; k < shards_json.size(); ++k) {
            const auto& s = shards_json[k];
            const std::string key = "shards[" + std::to_string(k) + "]";
            if (!s.is_object()) f.fail(key, "must be an object");
            const detail::manifest_fields sf{s, where + ": manifest field '" + key + "'"};
            static constexpr std::string_view shard_keys[] = {"file", "first_row", "rows", "checksum"};
            sf.only(shard_keys);
            shard sh;
            sh.file = sf.str("file");
            sh.first_row = sf.u64("first_row");
            sh.rows = sf.u64("rows");
            sh.checksum = sf.hex("checksum");
            m.shards.push_back(std::move(sh));
        }
        return m;
    }

    /// @brief Checks the fields against each other and against the layout the configuration
    ///        gives: offsets are the running sum of the primes, which are the configuration's
    ///        (recomputed as `make_layouts` does); rows / dim / row_bytes agree with them and the
    ///        codec; the shards tile [0, rows) with plain file names; the vocabulary fields are
    ///        all present or all null; the multipliers are valid (the reference ones are
    ///        recomputed when V' is known, explicit ones are accepted if they cannot overflow).
    /// @throws format_error naming `where` and the field.
    void validate(const std::string& where) const {
        auto fail = [&](const std::string& key, const std::string& what) {
            throw format_error(where + ": manifest field '" + key + "' " + what);
        };
        detail::codec_info info;
        try {
            info = detail::codec_info_for(codec);
        } catch (const config_error& e) {
            fail("codec", "= " + detail::quoted_excerpt(codec) + ": " + e.what());
        }
        const std::size_t heads = config.hash.num_heads();
        if (primes.size() != heads)
            fail("primes", "has " + std::to_string(primes.size()) + " entries, the config has " +
                               std::to_string(heads) + " heads");
        if (offsets.size() != heads)
            fail("offsets", "has " + std::to_string(offsets.size()) + " entries, the config has " +
                                std::to_string(heads) + " heads");
        // The primes do not depend on V', so they are recomputed even without a vocabulary.
        const auto reference = [&] {
            try {
                return make_layout(config.hash, config.layer_id, 1, 0);
            } catch (const config_error& e) {
                throw format_error(where + ": manifest field 'config': " + e.what());
            }
        }();
        std::int64_t running = 0;
        for (std::size_t h = 0; h < heads; ++h) {
            if (primes[h] != reference.primes[h])
                fail("primes", "[" + std::to_string(h) + "] = " + std::to_string(primes[h]) +
                                   ", but the config's layout gives " + std::to_string(reference.primes[h]));
            if (offsets[h] != running)
                fail("offsets", "[" + std::to_string(h) + "] = " + std::to_string(offsets[h]) +
                                    " is not the sum of the primes before it (" + std::to_string(running) + ")");
            running += primes[h];
        }
        if (rows != static_cast<std::uint64_t>(running))
            fail("rows",
                 "= " + std::to_string(rows) + " differs from the sum of the primes (" + std::to_string(running) + ")");
        if (dim != static_cast<std::uint64_t>(config.hash.head_dim()))
            fail("dim", "= " + std::to_string(dim) + " differs from the config's head width embed/heads = " +
                            std::to_string(config.hash.head_dim()));
        try {
            info.check_dim(static_cast<std::size_t>(dim));
        } catch (const config_error& e) {
            fail("dim", "= " + std::to_string(dim) + ": " + e.what());
        }
        if (row_bytes != info.row_bytes(static_cast<std::size_t>(dim)))
            fail("row_bytes", "= " + std::to_string(row_bytes) + ", but " + codec + " rows of " + std::to_string(dim) +
                                  " values take " + std::to_string(info.row_bytes(static_cast<std::size_t>(dim))));
        std::uint64_t next = 0;                        // never above `rows`, so `rows - next` cannot wrap
        std::map<std::string_view, std::size_t> files; // file name -> first shard using it
        for (std::size_t k = 0; k < shards.size(); ++k) {
            const std::string key = "shards[" + std::to_string(k) + "]";
            const shard& s = shards[k];
            if (!detail::plain_file_name(s.file))
                fail(key + ".file", "= " + detail::quoted_excerpt(s.file) +
                                        " must be a plain file name (shards live next to the manifest)");
            if (s.first_row != next)
                fail(key + ".first_row", "= " + std::to_string(s.first_row) + ", expected " + std::to_string(next) +
                                             " (shards tile the rows)");
            if (s.rows == 0) fail(key + ".rows", "is 0");
            if (s.rows > rows - next)
                fail(key + ".rows", "= " + std::to_string(s.rows) + " runs past the table's " + std::to_string(rows) +
                                        " rows (it starts at row " + std::to_string(next) + ")");
            next += s.rows;
            if (const auto [it, fresh] = files.emplace(s.file, k); !fresh)
                fail(key + ".file", "repeats shard " + std::to_string(it->second) + "'s file");
        }
        if (next != rows)
            fail("shards", "cover " + std::to_string(next) + " rows, the table has " + std::to_string(rows));
        const bool any_vocab = vocab_size || canonical_vocab_size || vocab_checksum;
        const bool all_vocab = vocab_size && canonical_vocab_size && vocab_checksum;
        if (any_vocab && !all_vocab)
            fail("vocab_size", "canonical_vocab_size and vocab_checksum must be all set or all null");
        if (all_vocab && (*canonical_vocab_size < 1 || *canonical_vocab_size > *vocab_size))
            fail("canonical_vocab_size", "= " + std::to_string(*canonical_vocab_size) +
                                             " must be in [1, vocab_size = " + std::to_string(*vocab_size) + "]");
        if (multipliers) {
            try {
                validate_multipliers(*multipliers, config.hash.max_ngram,
                                     canonical_vocab_size ? *canonical_vocab_size : 1);
            } catch (const config_error& e) {
                fail("multipliers", std::string(": ") + e.what());
            }
        }
    }
};

/// @brief Progress of long work: `done` of `total` units (rows for packing, bytes for
///        verifying). May throw to abandon the work (the writer then removes everything).
using table_progress = std::function<void(std::uint64_t done, std::uint64_t total)>;

/// @brief What a table file is built from: the layer configuration, optionally its canonical
///        vocabulary and explicit multipliers, and how to store the rows.
struct table_spec {
    layer_config config;
    /// The canonical table; with it the manifest records V, V' and its checksum, and the
    /// reference multipliers are computed when `multipliers` is empty.
    std::optional<canonical_table> vocab;
    /// Explicit multipliers (e.g. `multipliers.layer{L}` of a checkpoint).
    std::optional<std::vector<std::int64_t>> multipliers;
    std::string codec = "f32";
    std::size_t shards = 1;
};

namespace detail {

/// A temporary file next to its target; `commit` renames it into place; the destructor
/// removes it unless committed.
class temp_output {
public:
    temp_output() = default;
    temp_output(const temp_output&) = delete;
    temp_output& operator=(const temp_output&) = delete;
    ~temp_output() { discard(); }

    void create(const std::filesystem::path& target) {
        target_ = target;
        if (!target.has_filename())
            throw io_error("table writer: output path '" + target.string() + "' has no file name");
        const std::filesystem::path dir = parent_dir(target);
        tmp_ = (dir / ("." + target.filename().string() + ".tmp.XXXXXX")).string();
        fd_ = ::mkstemp(tmp_.data());
        if (fd_ < 0) {
            const int err = errno;
            tmp_.clear();
            throw io_error("table writer: cannot create a temporary file for '" + target.string() + "' in '" +
                           dir.string() + "': " + errno_text(err));
        }
        if (::fchmod(fd_, 0644) != 0) fail("chmod");
    }
    void write(const void* data, std::size_t size) {
        const char* p = static_cast<const char*>(data);
        while (size > 0) {
            const ::ssize_t n = ::write(fd_, p, size);
            if (n < 0) {
                if (errno == EINTR) continue;
                fail("write");
            }
            p += n;
            size -= static_cast<std::size_t>(n);
        }
    }
    void write_at(std::uint64_t offset, const void* data, std::size_t size) {
        const char* p = static_cast<const char*>(data);
        while (size > 0) {
            const ::ssize_t n = ::pwrite(fd_, p, size, static_cast<::off_t>(offset));
            if (n < 0) {
                if (errno == EINTR) continue;
                fail("write");
            }
            p += n;
            offset += static_cast<std::uint64_t>(n);
            size -= static_cast<std::size_t>(n);
        }
    }
    /// fsync and close (the data is durable under the temporary name).
    void sync_close() {
        if (fd_ < 0) return;
        if (::fsync(fd_) != 0) fail("fsync");
        const int fd = std::exchange(fd_, -1);
        if (::close(fd) != 0) fail("close");
    }
    void commit() {
        if (std::rename(tmp_.c_str(), target_.c_str()) != 0)
            throw io_error("table writer: cannot rename '" + tmp_ + "' to '" + target_.string() +
                           "': " + errno_text(errno));
        committed_ = true;
    }
    /// Closes and removes the temporary (or, with `also_target`, the committed file).
    void discard(bool also_target = false) noexcept {
        if (fd_ >= 0) ::close(std::exchange(fd_, -1));
        if (!committed_ && !tmp_.empty()) ::unlink(tmp_.c_str());
        if (committed_ && also_target) ::unlink(target_.c_str());
        tmp_.clear();
    }
    [[nodiscard]] bool committed() const noexcept { return committed_; }
    [[nodiscard]] const std::filesystem::path& target() const noexcept { return target_; }

private:
    [[noreturn]] void fail(const char* what) const {
        throw io_error("table writer: cannot " + std::string(what) + " '" + tmp_ + "' (for '" + target_.string() +
                       "'): " + errno_text(errno));
    }

    std::filesystem::path target_;
    std::string tmp_;
    int fd_ = -1;
    bool committed_ = false;
};

inline void fsync_dir(const std::filesystem::path& dir, const std::string& what) {
    detail::fd_closer fd{::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)};
    // Some file systems cannot fsync a directory (EINVAL); the rename is then as durable as
    // they make it.
    if (fd.fd < 0 || (::fsync(fd.fd) != 0 && errno != EINVAL))
        throw io_error("table writer: wrote " + what + " but cannot fsync its directory '" + dir.string() +
                       "': " + errno_text(errno));
}

/// One tensor of a header being written: name, dtype, shape, byte size (data in this order).
struct header_tensor {
    std::string name;
    dtype type;
    std::vector<std::int64_t> shape;
    std::uint64_t bytes;
};

/// The header JSON (unpadded) of tensors laid out back to back in the given order.
inline std::string header_json(const std::map<std::string, std::string>& metadata,
                               const std::vector<header_tensor>& tensors) {
    nlohmann::json h = nlohmann::json::object();
    if (!metadata.empty()) h["__metadata__"] = metadata;
    std::uint64_t offset = 0;
    for (const auto& t : tensors) {
        h[t.name] = {{"dtype", dtype_name(t.type)}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.bytes}}};
        offset += t.bytes;
    }
    return h.dump();
}

/// Header length for `json_size` bytes of JSON such that the data offset `aligned_offset`
/// lands on a 4096-byte boundary of the file (8-byte length field + header + offset).
inline std::size_t padded_header_size(std::size_t json_size, std::uint64_t aligned_offset) {
    constexpr std::uint64_t align = 4096;
    const std::uint64_t used = (8 + json_size + aligned_offset) % align;
    return json_size + static_cast<std::size_t>((align - used) % align);
}

/// 8-byte length prefix + header padded with spaces to exactly `size` bytes.
inline std::string header_bytes(std::string json, std::size_t size) {
    json.append(size - json.size(), ' ');
    std::string out(8, '\0');
    for (std::size_t i = 0; i < 8; ++i)
        out[i] = static_cast<char>((static_cast<std::uint64_t>(size) >> (8 * i)) & 0xFFu);
    return out + json;
}

} // namespace detail

/// @brief Streams a table file to disk: the headers first, then the rows block by block
///        (never the whole table in memory), then the checksums; atomic as the format notes
///        describe.
///
/// Use: construct with the target path and a `table_spec`, `append` all `rows()` rows (floats,
/// encoded here) or `append_encoded` (already in the codec's bytes), then `finish()`.
/// Destroying the writer before `finish()` returns (an exception, a throwing progress
/// callback) removes every file it created.
class table_file_writer {
public:
    /// @throws config_error for an inconsistent spec (bad config, unknown codec, a dim the
    ///         codec cannot store, shards outside [1, rows], a vocabulary that does not fit);
    ///         io_error if the first file cannot be created.
    table_file_writer(std::filesystem::path out, table_spec spec, table_progress progress = {})
        : out_(std::move(out)), progress_(std::move(progress)) {
        spec.config.validate();
        codec_ = detail::codec_info_for(spec.codec);
        m_.table_id = detail::random_table_id();
        m_.config = spec.config;
        m_.codec = codec_.name;
        layer_layout layout;
        if (spec.vocab) {
            const canonical_table& v = *spec.vocab;
            if (v.empty()) throw config_error("table writer: the canonical vocabulary is empty");
            layout = make_layout(spec.config.hash, spec.config.layer_id, v.canonical_size(),
                                 v.canonical_pad_id(spec.config.hash.pad_id));
            if (spec.multipliers) set_multipliers(layout, *spec.multipliers);
            m_.multipliers = layout.multipliers;
            m_.vocab_size = static_cast<std::int64_t>(v.vocab_size());
            m_.canonical_vocab_size = v.canonical_size();
            lookup_ = std::vector<std::int64_t>(v.lookup().begin(), v.lookup().end());
            m_.vocab_checksum = detail::xxh3_of(std::as_bytes(std::span<const std::int64_t>(lookup_)));
        } else {
            layout = make_layout(spec.config.hash, spec.config.layer_id, 1, 0); // primes only
            if (spec.multipliers) {
                validate_multipliers(*spec.multipliers, spec.config.hash.max_ngram, 1);
                m_.multipliers = spec.multipliers;
            }
        }
        m_.primes = layout.primes;
        m_.offsets = layout.offsets;
        m_.rows = static_cast<std::uint64_t>(layout.total_rows);
        m_.dim = static_cast<std::uint64_t>(layout.head_dim);
        try {
            codec_.check_dim(static_cast<std::size_t>(m_.dim));
        } catch (const config_error& e) {
            throw config_error("table writer for '" + out_.string() + "': rows of " + std::to_string(m_.dim) +
                               " values cannot be stored as " + codec_.name + ": " + e.what());
        }
        m_.row_bytes = codec_.row_bytes(static_cast<std::size_t>(m_.dim));
        const auto bounds = shard_bounds_by_rows(static_cast<std::size_t>(m_.rows), spec.shards);
        for (std::size_t k = 0; k < spec.shards; ++k)
            m_.shards.push_back({spec.shards == 1 ? out_.filename().string() : detail::shard_file_name(out_, k),
                                 bounds[k], bounds[k + 1] - bounds[k], 0});
        if (!out_.has_filename()) throw io_error("table writer: output path '" + out_.string() + "' has no file name");
        m_.validate("table writer for '" + out_.string() + "'"); // what the reader will check
        files_ = std::vector<detail::temp_output>(spec.shards);
        open_shard(0);
    }

    table_file_writer(const table_file_writer&) = delete;
    table_file_writer& operator=(const table_file_writer&) = delete;

    /// Removes every file written unless `finish()` completed.
    ~table_file_writer() {
        if (!finished_) {
            for (auto& f : files_) f.discard(/*also_target=*/true);
            manifest_.discard(true);
        }
    }

    /// The manifest being written (checksums are filled in as shards complete).
    [[nodiscard]] const table_manifest& manifest() const noexcept { return m_; }
    [[nodiscard]] std::uint64_t rows() const noexcept { return m_.rows; }
    [[nodiscard]] std::uint64_t dim() const noexcept { return m_.dim; }
    [[nodiscard]] std::uint64_t rows_written() const noexcept { return written_; }

    /// @brief Encodes and writes the next `values.size() / dim` rows.
    /// @throws input_error if the size is not a multiple of dim or exceeds the rows left;
    ///         io_error on a write failure; whatever the progress callback throws.
    void append(std::span<const float> values) {
        const auto dim = static_cast<std::size_t>(m_.dim);
        if (values.size() % dim != 0)
            throw input_error("table writer: " + std::to_string(values.size()) + " values are not whole rows of " +
                              std::to_string(dim));
        const std::size_t n = values.size() / dim;
        check_room(n);
        const auto rb = static_cast<std::size_t>(m_.row_bytes);
        const std::size_t chunk_rows = std::max<std::size_t>(1, (std::size_t{4} << 20) / rb);
        buffer_.resize(std::min(n, chunk_rows) * rb);
        for (std::size_t done = 0; done < n;) {
            const std::size_t count = std::min({n - done, chunk_rows, rows_left_in_shard()});
            for (std::size_t i = 0; i < count; ++i)
                codec_.encode(values.data() + (done + i) * dim, buffer_.data() + i * rb, dim);
            put(std::span<const std::byte>(buffer_.data(), count * rb), count);
            done += count;
        }
        report();
    }

    /// @brief Writes the next rows as stored bytes (a multiple of row_bytes).
    void append_encoded(std::span<const std::byte> bytes) {
        const auto rb = static_cast<std::size_t>(m_.row_bytes);
        if (bytes.size() % rb != 0)
            throw input_error("table writer: " + std::to_string(bytes.size()) + " bytes are not whole rows of " +
                              std::to_string(rb) + " bytes");
        const std::size_t n = bytes.size() / rb;
        check_room(n);
        for (std::size_t done = 0; done < n;) {
            const std::size_t count = std::min(n - done, rows_left_in_shard());
            put(bytes.subspan(done * rb, count * rb), count);
            done += count;
        }
        report();
    }

    /// @brief Completes the table: checksums into the manifest, fsync, renames (shards first,
    ///        the manifest last), fsync of the directory.
    /// @throws input_error if rows are missing; io_error on any file system failure (nothing
    ///         is left behind then).
    const table_manifest& finish() {
        if (finished_) return m_;
        if (written_ != m_.rows)
            throw input_error("table writer: finish() after " + std::to_string(written_) + " of " +
                              std::to_string(m_.rows) + " rows");
        close_shard(files_.size() - 1);
        const std::string shown = "'" + out_.string() + "'";
        if (files_.size() == 1) {
            // The rows live in the manifest file: rewrite its header with the checksum.
            write_manifest_header(files_[0]);
            files_[0].sync_close();
            files_[0].commit();
        } else {
            manifest_.create(out_);
            write_manifest_header(manifest_);
            if (!lookup_.empty()) manifest_.write(lookup_.data(), lookup_.size() * sizeof(std::int64_t));
            manifest_.sync_close();
            // The shard renames may replace the shards of an older table at this path. Its
            // manifest goes first (durably), so that a process killed between the renames leaves
            // no table at all rather than the old manifest over some new shards.
            bool replaces_shards = false;
            for (const auto& f : files_) {
                std::error_code ec;
                replaces_shards = replaces_shards || std::filesystem::exists(f.target(), ec);
            }
            if (replaces_shards && ::unlink(out_.c_str()) == 0) detail::fsync_dir(detail::parent_dir(out_), shown);
            for (auto& f : files_) f.commit();
            manifest_.commit();
        }
        detail::fsync_dir(detail::parent_dir(out_), shown);
        finished_ = true;
        return m_;
    }

private:
    void check_room(std::size_t n) const {
        if (n > m_.rows - written_)
            throw input_error("table writer: " + std::to_string(n) + " more rows, but only " +
                              std::to_string(m_.rows - written_) + " of " + std::to_string(m_.rows) + " are left");
    }
    std::size_t rows_left_in_shard() const noexcept {
        const auto& s = m_.shards[current_];
        return static_cast<std::size_t>(s.first_row + s.rows - written_);
    }
    void put(std::span<const std::byte> bytes, std::size_t rows) {
        files_[current_].write(bytes.data(), bytes.size());
        hash_.update(bytes);
        written_ += rows;
        if (rows_left_in_shard() == 0 && current_ + 1 < files_.size()) {
            close_shard(current_);
            open_shard(current_ + 1);
        }
    }
    void report() {
        if (progress_) progress_(written_, m_.rows);
    }

    std::map<std::string, std::string> shard_metadata(std::size_t k) const {
        const auto& s = m_.shards[k];
        nlohmann::json j = {{"format", table_manifest::shard_format_name},
                            {"version", m_.version},
                            {"table_id", detail::hex64(m_.table_id)},
                            {"index", k},
                            {"shards", m_.shards.size()},
                            {"first_row", s.first_row},
                            {"rows", s.rows},
                            {"codec", m_.codec},
                            {"dim", m_.dim}};
        return {{std::string(table_manifest::shard_metadata_key), j.dump()}};
    }

    /// The manifest file's tensors, in data order: `lookup`, then (one shard) `rows`.
    std::vector<detail::header_tensor> manifest_tensors() const {
        std::vector<detail::header_tensor> t;
        if (!lookup_.empty())
            t.push_back({"lookup", dtype::i64, {static_cast<std::int64_t>(lookup_.size())}, lookup_.size() * 8});
        if (files_.size() == 1) t.push_back(rows_tensor(0));
        return t;
    }
    detail::header_tensor rows_tensor(std::size_t k) const {
        const auto& s = m_.shards[k];
        return {"rows", codec_.stored, detail::stored_shape(codec_, s.rows, m_.dim), s.rows * m_.row_bytes};
    }
    std::map<std::string, std::string> manifest_metadata() const {
        nlohmann::json j = m_.to_json();
        j[std::string(table_manifest::checksum_key)] = detail::hex64(table_manifest::digest(j));
        return {{std::string(table_manifest::metadata_key), j.dump()}};
    }

    void open_shard(std::size_t k) {
        current_ = k;
        hash_ = detail::xxh3_stream();
        detail::temp_output& f = files_[k];
        f.create(parent_dir_file(m_.shards[k].file));
        if (files_.size() == 1) {
            // Header with a placeholder checksum (same width: rewritten in place by finish()),
            // then the lookup; the rows follow on a 4096-byte boundary.
            const std::string json = detail::header_json(manifest_metadata(), manifest_tensors());
            header_size_ = detail::padded_header_size(json.size(), lookup_.size() * 8);
            const std::string head = detail::header_bytes(json, header_size_);
            f.write(head.data(), head.size());
            if (!lookup_.empty()) f.write(lookup_.data(), lookup_.size() * sizeof(std::int64_t));
        } else {
            const std::string json = detail::header_json(shard_metadata(k), {rows_tensor(k)});
            const std::string head = detail::header_bytes(json, detail::padded_header_size(json.size(), 0));
            f.write(head.data(), head.size());
        }
    }
    void close_shard(std::size_t k) {
        m_.shards[k].checksum = hash_.digest();
        if (files_.size() > 1) files_[k].sync_close();
    }
    /// Writes the final manifest header: in place over the placeholder (one shard), or as the
    /// start of the separate manifest file.
    void write_manifest_header(detail::temp_output& f) {
        const std::string json = detail::header_json(manifest_metadata(), manifest_tensors());
        if (files_.size() == 1) {
            if (json.size() > header_size_)
                throw io_error("table writer: the final header of '" + out_.string() + "' outgrew its placeholder");
            const std::string head = detail::header_bytes(json, header_size_);
            f.write_at(0, head.data(), head.size());
        } else {
            const std::string head =
                detail::header_bytes(json, detail::padded_header_size(json.size(), lookup_.size() * 8));
            f.write(head.data(), head.size());
        }
    }
    std::filesystem::path parent_dir_file(const std::string& name) const {
        return out_.has_parent_path() ? out_.parent_path() / name : std::filesystem::path(name);
    }

    std::filesystem::path out_;
    table_progress progress_;
    detail::codec_info codec_;
    table_manifest m_;
    std::vector<std::int64_t> lookup_;
    std::vector<detail::temp_output> files_;
    detail::temp_output manifest_;
    detail::xxh3_stream hash_;
    std::vector<std::byte> buffer_;
    std::size_t current_ = 0, header_size_ = 0;
    std::uint64_t written_ = 0;
    bool finished_ = false;
};

/// @brief Converts a reference checkpoint or forward case into a table file.
///
/// Reads the configuration (`config` metadata), the rows (`multi_head_embedding.embedding.weight`,
/// F32 / BF16 / F16 / F64 [sum(p), d], finite values only), the canonical table (`lookup`, when
/// present) and explicit multipliers (`multipliers.layer{L}`, when present); checks
/// `multi_head_embedding.offsets` against the layout when present. The rows are converted and
/// written `block_rows` at a time (0: about 8 MiB of floats), so memory stays bounded.
/// @param progress called after every block with (rows written, total rows).
/// @throws format_error / config_error naming the file and the tensor or field at fault,
///         io_error for file system failures; no output is left behind on any error.
inline table_manifest pack_table(const safetensors_file& source, const std::filesystem::path& out,
                                 std::string_view codec = "f32", std::size_t shards = 1, table_progress progress = {},
                                 std::size_t block_rows = 0) {
    const std::string src = source.path().empty() ? std::string("safetensors buffer") : source.path().string();
    constexpr const char* weight_name = "multi_head_embedding.embedding.weight";
    const tensor_view* weight = source.find(weight_name);
    if (weight == nullptr)
        throw format_error(src + ": not an Engram checkpoint or forward case (no tensor '" + std::string(weight_name) +
                           "')");
    table_spec spec;
    const std::string* config_text = source.find_metadata("config");
    if (config_text == nullptr)
        throw format_error(src + ": not an Engram checkpoint or forward case (no 'config' metadata)");
    try {
        spec.config = layer_config_from_json(parse_config_text(*config_text));
    } catch (const format_error& e) {
        throw format_error(src + ": " + e.what());
    } catch (const config_error& e) {
        throw config_error(src + ": " + e.what());
    }
    if (source.contains("lookup")) spec.vocab = load_canonical_table(source);
    const std::string mult_name = "multipliers.layer" + std::to_string(spec.config.layer_id);
    if (const tensor_view* t = source.find(mult_name)) {
        if (t->shape.size() != 1 || (t->type != dtype::i64 && t->type != dtype::i32))
            throw format_error(src + ": tensor '" + mult_name + "' must be an I64 vector");
        spec.multipliers = t->to_vector<std::int64_t>();
    }
    spec.codec = std::string(codec);
    spec.shards = shards;

    // The layout the rows must have (the writer recomputes and checks it as well).
    const layer_layout layout = make_layout(spec.config.hash, spec.config.layer_id, 1, 0);
    const std::vector<std::int64_t> want{layout.total_rows, layout.head_dim};
    if (weight->shape != want)
        throw format_error(src + ": tensor '" + std::string(weight_name) + "' has shape " +
                           detail::shape_string(weight->shape) + ", the config's layout needs " +
                           detail::shape_string(want));
    if (weight->type != dtype::f32 && weight->type != dtype::bf16 && weight->type != dtype::f16 &&
        weight->type != dtype::f64)
        throw format_error(src + ": tensor '" + std::string(weight_name) + "' has dtype " +
                           std::string(dtype_name(weight->type)) + ", expected F32, BF16, F16 or F64");
    if (const tensor_view* t = source.find("multi_head_embedding.offsets")) {
        if (t->shape.size() != 1 || (t->type != dtype::i64 && t->type != dtype::i32) ||
            t->to_vector<std::int64_t>() != layout.offsets)
            throw format_error(
                src + ": tensor 'multi_head_embedding.offsets' does not match the configuration's table layout");
    }

    table_file_writer writer(out, std::move(spec), std::move(progress));
    const auto dim = static_cast<std::size_t>(layout.head_dim);
    const auto rows = static_cast<std::size_t>(layout.total_rows);
    if (block_rows == 0) block_rows = std::max<std::size_t>(1, (std::size_t{8} << 20) / (dim * sizeof(float)));
    const std::size_t esize = dtype_size(weight->type);
    // A file opened by path is a read-only mapping whose pages can be dropped once converted (a
    // `from_bytes` buffer is ordinary memory: dropping its pages would zero them).
    const bool mapped = !source.path().empty();
    std::vector<float> block(std::min(block_rows, rows) * dim);
    for (std::size_t first = 0; first < rows; first += block_rows) {
        const std::size_t n = std::min(block_rows, rows - first);
        const std::byte* p = weight->bytes.data() + first * dim * esize;
        const std::size_t count = n * dim;
        switch (weight->type) {
        case dtype::f32:
            std::memcpy(block.data(), p, count * sizeof(float));
            break;
        case dtype::bf16:
            for (std::size_t i = 0; i < count; ++i) block[i] = bf16_to_float(detail::load<std::uint16_t>(p + 2 * i));
            break;
        case dtype::f16:
            for (std::size_t i = 0; i < count; ++i) block[i] = f16_to_float(detail::load<std::uint16_t>(p + 2 * i));
            break;
        default:
            for (std::size_t i = 0; i < count; ++i) block[i] = static_cast<float>(detail::load<double>(p + 8 * i));
            break;
        }
        for (std::size_t i = 0; i < count; ++i)
            if (!std::isfinite(block[i]))
                throw format_error(src + ": tensor '" + std::string(weight_name) + "' has a non-finite value (" +
                                   std::to_string(block[i]) + ") at flat index " + std::to_string(first * dim + i));
        writer.append(std::span<const float>(block.data(), count));
        if (mapped) detail::drop_pages({p, count * esize});
    }
    return writer.finish();
}

/// @brief A table file opened for reading: the validated manifest, the canonical table, and
///        memory-mapped row tables (one per shard, or all shards behind one `sharded_table`).
///
/// Opening reads only headers and the `lookup` tensor (see the format notes for what is
/// checked); the rows are mapped, never read, until looked up. `verify()` hashes them all.
class table_file {
public:
    /// The row table over all shards of a table file of codec `Row`.
    template <class Row>
    using rows_table_type = sharded_table<mmap_storage::table<Row>>;

    /// What `verify` checked.
    struct verify_report {
        std::size_t shards = 0;
        std::uint64_t rows = 0, bytes = 0;
        bool vocab = false; ///< whether a vocabulary checksum was checked
    };

    /// @brief Opens and validates a table file (its manifest file's path).
    /// @throws io_error if a file cannot be opened; format_error naming the file and the field
    ///         or tensor at fault; unsupported_error for a newer format version.
    static table_file open(const std::filesystem::path& path) { return open(path, true); }

    /// @brief Opens and validates the manifest of a table file (as `open`: fields, layout,
    ///        vocabulary, checksum) without opening any shard: a process that serves only some
    ///        rows (a rank of a distributed table) then opens its own shards with
    ///        `shard_table` / `rows_table(k0, k1)`, each checked as at `open`.
    static table_file open_manifest(const std::filesystem::path& path) { return open(path, false); }

    /// @brief The shards holding rows `[first_row, last_row)`: `{k0, k1}`, shards k0..k1-1.
    /// @throws input_error for an empty range or one past the table's rows.
    [[nodiscard]] std::pair<std::size_t, std::size_t> shards_holding(std::size_t first_row,
                                                                     std::size_t last_row) const {
        if (first_row >= last_row || last_row > rows())
            throw input_error("table file '" + path_.string() + "': rows [" + std::to_string(first_row) + ", " +
                              std::to_string(last_row) + ") are empty or outside its " + std::to_string(rows()) +
                              " rows");
        std::size_t k0 = 0;
        while (m_.shards[k0].first_row + m_.shards[k0].rows <= first_row) ++k0;
        std::size_t k1 = k0 + 1;
        while (k1 < m_.shards.size() && m_.shards[k1].first_row < last_row) ++k1;
        return {k0, k1};
    }

private:
    static table_file open(const std::filesystem::path& path, bool check_shards) {
        table_file tf;
        tf.path_ = path;
        const std::string where = "table file '" + path.string() + "'";
        const safetensors_file file = safetensors_file::open(path);
        const std::string* text = file.find_metadata(table_manifest::metadata_key);
        if (text == nullptr) {
            if (file.find_metadata(table_manifest::shard_metadata_key) != nullptr)
                throw format_error(where + " is one shard of a table; open its manifest file instead");
            throw format_error(where + ": not an engram table file (no '" + std::string(table_manifest::metadata_key) +
                               "' metadata)");
        }
        const nlohmann::json j = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
        if (j.is_discarded())
            throw format_error(where + ": the '" + std::string(table_manifest::metadata_key) +
                               "' metadata is not valid JSON");
        tf.m_ = table_manifest::from_json(j, where);
        tf.m_.validate(where);
        tf.codec_ = detail::codec_info_for(tf.m_.codec);
        tf.load_vocab(file, where);
        table_manifest::check_checksum(j, where);
        for (std::size_t k = 0; check_shards && k < tf.m_.shards.size(); ++k) {
            if (tf.m_.shards[k].file == path.filename().string()) {
                tf.check_shard(file, k, where, /*is_manifest=*/true);
                continue;
            }
            const safetensors_file shard = tf.open_shard(k, where);
            tf.check_shard(shard, k, where, false);
        }
        return tf;
    }

public:
    [[nodiscard]] const std::filesystem::path& path() const noexcept { return path_; }
    [[nodiscard]] const table_manifest& manifest() const noexcept { return m_; }
    [[nodiscard]] const layer_config& config() const noexcept { return m_.config; }
    /// The canonical table, when the file has one.
    [[nodiscard]] const std::optional<canonical_table>& vocab() const noexcept { return vocab_; }
    [[nodiscard]] const std::string& codec() const noexcept { return m_.codec; }
    [[nodiscard]] std::size_t rows() const noexcept { return static_cast<std::size_t>(m_.rows); }
    [[nodiscard]] std::size_t dim() const noexcept { return static_cast<std::size_t>(m_.dim); }
    [[nodiscard]] std::size_t num_shards() const noexcept { return m_.shards.size(); }
    /// The path of shard k's file (next to the manifest).
    [[nodiscard]] std::filesystem::path shard_path(std::size_t k) const {
        check_index(k);
        return path_.has_parent_path() ? path_.parent_path() / m_.shards[k].file
                                       : std::filesystem::path(m_.shards[k].file);
    }

    /// @brief The layer layout of the file (primes, offsets, multipliers, V', canonical pad).
    /// @throws config_error if the file has no vocabulary (V' and the pad are unknown then).
    [[nodiscard]] layer_layout layout() const {
        if (!vocab_) throw config_error("table file '" + path_.string() + "' has no canonical vocabulary");
        layer_layout l = make_layout(m_.config.hash, m_.config.layer_id, vocab_->canonical_size(),
                                     vocab_->canonical_pad_id(m_.config.hash.pad_id));
        if (m_.multipliers) set_multipliers(l, *m_.multipliers);
        return l;
    }

    /// @brief Shard k's rows as a memory-mapped table (`Row`'s codec must be the file's).
    ///        The shard file is checked again as at `open` (its metadata: table id, index,
    ///        rows; its tensor's dtype and shape), so a shard replaced since `open` (by another
    ///        pack, or by hand) is refused here, not read.
    /// @throws config_error for another codec; io_error / format_error if the shard file
    ///         changed since `open`.
    template <class Row>
    [[nodiscard]] mmap_storage::table<Row> shard_table(std::size_t k) const {
        check_index(k);
        check_codec<Row>();
        const std::string where = "table file '" + path_.string() + "'";
        const bool is_manifest = m_.shards[k].file == path_.filename().string();
        const safetensors_file file = open_shard(k, where);
        check_shard(file, k, where, is_manifest);
        if (is_manifest) check_same_table(file, where);
        auto t = mmap_storage::table<Row>::from_safetensors(file, "rows", dim());
        if (t.rows() != m_.shards[k].rows)
            throw format_error("table file '" + path_.string() + "': shard " + std::to_string(k) + " now has " +
                               std::to_string(t.rows()) + " rows, the manifest says " +
                               std::to_string(m_.shards[k].rows));
        return t;
    }

    /// @brief All rows: one `sharded_table` over every shard's mapping (a single shard is a
    ///        one-shard table), for `layer.forward(table, ...)` and `gather`.
    template <class Row>
    [[nodiscard]] rows_table_type<Row> rows_table() const {
        return rows_table<Row>(0, num_shards());
    }

    /// @brief The rows of shards `[k0, k1)` only (e.g. from `shards_holding`): one
    ///        `sharded_table` whose row 0 is row `manifest().shards[k0].first_row` of the file.
    ///        Only those shard files are opened (and checked as at `open`).
    /// @throws input_error for an empty or out-of-range shard range; as `shard_table`.
    template <class Row>
    [[nodiscard]] rows_table_type<Row> rows_table(std::size_t k0, std::size_t k1) const {
        if (k0 >= k1 || k1 > num_shards())
            throw input_error("table file '" + path_.string() + "': shards [" + std::to_string(k0) + ", " +
                              std::to_string(k1) + ") of " + std::to_string(num_shards()));
        const auto base = static_cast<std::size_t>(m_.shards[k0].first_row);
        std::vector<std::size_t> bounds;
        for (std::size_t k = k0; k < k1; ++k) bounds.push_back(static_cast<std::size_t>(m_.shards[k].first_row) - base);
        bounds.push_back(static_cast<std::size_t>(m_.shards[k1 - 1].first_row + m_.shards[k1 - 1].rows) - base);
        std::size_t k = k0;
        return make_sharded_table(std::span<const std::size_t>(bounds),
                                  [&](std::size_t, std::size_t) { return shard_table<Row>(k++); });
    }

    /// @brief Calls `f(rows_table<C>())` with the file's codec C (f32, bf16, f16, fp8, int8);
    ///        `f` must accept each (and return one type).
    template <class F>
    decltype(auto) visit_rows(F&& f) const {
        return dispatch_codec(m_.codec,
                              [&](auto c) -> decltype(auto) { return std::forward<F>(f)(rows_table<decltype(c)>()); });
    }

    /// @brief Recomputes every content checksum: the vocabulary's and each shard's rows,
    ///        streaming through the mapping (resident memory stays bounded: pages are dropped
    ///        behind the hash).
    /// @param progress called with (bytes hashed, total bytes) after every chunk.
    /// @throws format_error naming the shard (index, file, row range) whose rows do not match,
    ///         or the file that changed since `open`.
    verify_report verify(table_progress progress = {}) const {
        const std::string where = "table file '" + path_.string() + "'";
        verify_report report;
        if (vocab_) {
            const safetensors_file file = safetensors_file::open(path_);
            const std::uint64_t got = detail::xxh3_of(file.at("lookup").bytes);
            if (got != *m_.vocab_checksum)
                throw format_error(where + ": tensor 'lookup' hashes to " + detail::hex64(got) +
                                   ", the manifest's vocab_checksum is " + detail::hex64(*m_.vocab_checksum));
            report.vocab = true;
        }
        const std::uint64_t total = m_.rows * m_.row_bytes;
        std::uint64_t done = 0;
        constexpr std::size_t chunk = std::size_t{32} << 20;
        for (std::size_t k = 0; k < num_shards(); ++k) {
            const auto& s = m_.shards[k];
            const safetensors_file file = open_shard(k, where);
            check_shard(file, k, where, s.file == path_.filename().string());
            const std::span<const std::byte> bytes = file.at("rows").bytes;
            detail::xxh3_stream hash;
            for (std::size_t off = 0; off < bytes.size(); off += chunk) {
                const auto part = bytes.subspan(off, std::min(chunk, bytes.size() - off));
                hash.update(part);
                detail::drop_pages(part);
                done += part.size();
                if (progress) progress(done, total);
            }
            if (hash.digest() != s.checksum)
                throw format_error(where + ": shard " + std::to_string(k) + " ('" + s.file + "', rows [" +
                                   std::to_string(s.first_row) + ", " + std::to_string(s.first_row + s.rows) +
                                   ")): content checksum mismatch: the rows hash to " + detail::hex64(hash.digest()) +
                                   ", the manifest says " + detail::hex64(s.checksum));
            report.bytes += bytes.size();
        }
        report.shards = num_shards();
        report.rows = m_.rows;
        return report;
    }

private:
    table_file() = default;

    void check_index(std::size_t k) const {
        if (k >= m_.shards.size())
            throw input_error("table file '" + path_.string() + "': shard " + std::to_string(k) + " of " +
                              std::to_string(m_.shards.size()));
    }

    template <class Row>
    void check_codec() const {
        if (codec_of_t<Row>::name != m_.codec)
            throw config_error("table file '" + path_.string() + "' stores " + m_.codec + " rows, not " +
                               std::string(codec_of_t<Row>::name));
    }

    void load_vocab(const safetensors_file& file, const std::string& where) {
        if (!m_.canonical_vocab_size) return;
        const tensor_view* t = file.find("lookup");
        if (t == nullptr)
            throw format_error(where + ": the manifest has a vocabulary but the file has no tensor 'lookup'");
        if (t->type != dtype::i64 || t->shape.size() != 1 || t->shape[0] != *m_.vocab_size)
            throw format_error(where + ": tensor 'lookup' is " + std::string(dtype_name(t->type)) + " " +
                               detail::shape_string(t->shape) + ", expected I64 [" + std::to_string(*m_.vocab_size) +
                               "]");
        const std::uint64_t got = detail::xxh3_of(t->bytes);
        if (got != *m_.vocab_checksum)
            throw format_error(where + ": tensor 'lookup' hashes to " + detail::hex64(got) +
                               ", the manifest's vocab_checksum is " + detail::hex64(*m_.vocab_checksum) +
                               " (the vocabulary is corrupt)");
        canonical_table v;
        try {
            v = canonical_table::from_lookup(t->to_vector<std::int64_t>());
        } catch (const config_error& e) {
            throw format_error(where + ": tensor 'lookup': " + e.what());
        }
        if (v.canonical_size() != *m_.canonical_vocab_size)
            throw format_error(where + ": tensor 'lookup' has " + std::to_string(v.canonical_size()) +
                               " canonical ids, the manifest's canonical_vocab_size is " +
                               std::to_string(*m_.canonical_vocab_size));
        // With V' known the reference layout is fixed; the multipliers must fit V' too.
        try {
            const layer_layout l = make_layout(m_.config.hash, m_.config.layer_id, v.canonical_size(),
                                               v.canonical_pad_id(m_.config.hash.pad_id));
            if (!m_.multipliers)
                throw format_error(where + ": manifest field 'multipliers' is null although the vocabulary is known");
            if (*m_.multipliers != l.multipliers)
                validate_multipliers(*m_.multipliers, m_.config.hash.max_ngram, v.canonical_size());
        } catch (const config_error& e) {
            throw format_error(where + ": " + e.what());
        }
        vocab_ = std::move(v);
    }

    safetensors_file open_shard(std::size_t k, const std::string& where) const {
        const auto p = shard_path(k);
        const std::string which = where + ": shard " + std::to_string(k) + " ('" + m_.shards[k].file + "')";
        try {
            return safetensors_file::open(p);
        } catch (const io_error& e) {
            throw io_error(which + ": " + e.what());
        } catch (const format_error& e) {
            throw format_error(which + ": " + e.what());
        }
    }

    /// The manifest file `file` (opened again) still holds this table: its manifest's table id.
    void check_same_table(const safetensors_file& file, const std::string& where) const {
        const std::string* text = file.find_metadata(table_manifest::metadata_key);
        const nlohmann::json j =
            text == nullptr ? nlohmann::json() : nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
        if (!j.is_object())
            throw format_error(where + " was replaced since it was opened: it no longer holds a table manifest");
        const detail::manifest_fields f{j, where};
        if (f.hex("table_id") != m_.table_id)
            throw format_error(where + " was replaced since it was opened: it now holds table_id " + f.str("table_id") +
                               ", it had " + detail::hex64(m_.table_id));
    }

    void check_shard(const safetensors_file& file, std::size_t k, const std::string& where, bool is_manifest) const {
        const auto& s = m_.shards[k];
        const std::string which = where + ": shard " + std::to_string(k) + " ('" + s.file + "')";
        const tensor_view* t = file.find("rows");
        if (t == nullptr) throw format_error(which + " has no tensor 'rows'");
        const auto shape = detail::stored_shape(codec_, s.rows, m_.dim);
        if (t->type != codec_.stored || t->shape != shape)
            throw format_error(which + ": tensor 'rows' is " + std::string(dtype_name(t->type)) + " " +
                               detail::shape_string(t->shape) + ", expected " + std::string(dtype_name(codec_.stored)) +
                               " " + detail::shape_string(shape) + " for " + m_.codec + " rows");
        if (is_manifest) return;
        const std::string* text = file.find_metadata(table_manifest::shard_metadata_key);
        if (text == nullptr)
            throw format_error(which + " is not a table shard (no '" + std::string(table_manifest::shard_metadata_key) +
                               "' metadata)");
        const nlohmann::json j = nlohmann::json::parse(*text, nullptr, false);
        if (j.is_discarded() || !j.is_object())
            throw format_error(which + ": its '" + std::string(table_manifest::shard_metadata_key) +
                               "' metadata is not a JSON object");
        const detail::manifest_fields f{j, which};
        static constexpr std::string_view shard_keys[] = {"format",    "version", "table_id", "index", "shards",
                                                          "first_row", "rows",    "codec",    "dim"};
        f.only(shard_keys);
        if (f.str("format") != table_manifest::shard_format_name)
            f.fail("format", "is " + detail::quoted_excerpt(f.str("format")));
        if (f.i64("version") != m_.version)
            f.fail("version",
                   "is " + std::to_string(f.i64("version")) + ", the manifest's is " + std::to_string(m_.version));
        if (f.hex("table_id") != m_.table_id)
            throw format_error(which + " belongs to another table (table_id " + f.str("table_id") +
                               ", the manifest's is " + detail::hex64(m_.table_id) +
                               "): the table was rewritten only in part");
        if (f.u64("index") != k || f.u64("first_row") != s.first_row || f.u64("rows") != s.rows)
            throw format_error(which + " holds shard " + std::to_string(f.u64("index")) + " (rows from " +
                               std::to_string(f.u64("first_row")) + ", " + std::to_string(f.u64("rows")) +
                               " rows), but the manifest expects shard " + std::to_string(k) + " (rows from " +
                               std::to_string(s.first_row) + ", " + std::to_string(s.rows) + " rows)");
        if (f.u64("shards") != m_.shards.size())
            f.fail("shards", "is " + std::to_string(f.u64("shards")) + ", the manifest lists " +
                                 std::to_string(m_.shards.size()));
        if (f.str("codec") != m_.codec)
            f.fail("codec", "is " + detail::quoted_excerpt(f.str("codec")) + ", the manifest's is '" + m_.codec + "'");
        if (f.u64("dim") != m_.dim)
            f.fail("dim", "is " + std::to_string(f.u64("dim")) + ", the manifest's is " + std::to_string(m_.dim));
    }

    std::filesystem::path path_;
    table_manifest m_;
    detail::codec_info codec_;
    std::optional<canonical_table> vocab_;
};

static_assert(storage_table<table_file::rows_table_type<float>>);

/// @brief The temporary files that interrupted writes of the table at `path` (its manifest
///        file) may have left: `.NAME.tmp.XXXXXX` of the manifest and of every shard name
///        `STEM.shard{k}.EXT` (see `write_temporaries`), sorted.
///
/// A pack killed before its renames (SIGKILL, power loss) leaves them; nothing reads them, and
/// the table, old or new, is never one of them. Delete them when no pack of the table is running.
inline std::vector<std::filesystem::path> table_temporaries(const std::filesystem::path& path) {
    std::vector<std::filesystem::path> out = write_temporaries(path);
    if (!path.has_filename()) return out;
    const std::string prefix = "." + path.stem().string() + ".shard";
    const std::string suffix = path.extension().string() + ".tmp.";
    std::error_code ec;
    for (std::filesystem::directory_iterator it(detail::parent_dir(path), ec), end; !ec && it != end;
         it.increment(ec)) {
        const std::string name = it->path().filename().string();
        if (name.size() <= prefix.size() + suffix.size() + 6 || name.compare(0, prefix.size(), prefix) != 0) continue;
        std::size_t i = prefix.size();
        while (i < name.size() && name[i] >= '0' && name[i] <= '9') ++i;
        if (i == prefix.size() || name.size() != i + suffix.size() + 6 || name.compare(i, suffix.size(), suffix) != 0)
            continue;
        out.push_back(it->path());
    }
    std::sort(out.begin(), out.end());
    return out;
}

ENGRAM_END_NAMESPACE
