// DeepSeek-V4.1 test support: an oracle written from the spec (deepseek-v41.md) with plain loops
// in double precision, the golden case's tensors, and a scaled-down checkpoint directory in the
// released layout. Shared by the library and CLI tests.
#pragma once

#include <engram/io/safetensors.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace v41_test {

namespace fs = std::filesystem;

inline fs::path golden_case_path() { return fs::path(ENGRAM_TEST_DATA_DIR) / "v41_case.safetensors"; }

// ---- numbers, independent of the library ---------------------------------------------------

/// The value of an FP8 E4M3 (e4m3fn) code: bias 7, subnormals m/8 * 2^-6, S.1111.111 NaN.
inline double e4m3(std::uint8_t c) {
    const int sign = c >> 7, e = (c >> 3) & 15, m = c & 7;
    if (e == 15 && m == 7) return std::nan("");
    const double mag = e == 0 ? m / 8.0 * std::ldexp(1.0, -6) : (1.0 + m / 8.0) * std::ldexp(1.0, e - 7);
    return sign ? -mag : mag;
}

/// The nearest E4M3 value to x (|x| <= 448), ties to the even code, by search over all codes.
inline double round_e4m3(double x) {
    double best = 0;
    int best_code = 0;
    double best_err = INFINITY;
    for (int c = 0; c < 0x7F; ++c) {
        const double v = e4m3(static_cast<std::uint8_t>(c));
        const double err = std::fabs(std::fabs(x) - v);
        if (err < best_err || (err == best_err && (c & 1) == 0 && (best_code & 1) == 1)) {
            best = v;
            best_err = err;
            best_code = c;
        }
    }
    return x < 0 ? -best : best;
}

/// bf16 bits of a double: rounded to float first where that is exact, then to nearest even.
inline std::uint16_t bf16_bits(double x) {
    const float f = static_cast<float>(x);
    const auto u = std::bit_cast<std::uint32_t>(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40u);
    if ((u & 0x7FFFFFFFu) == 0x7F800000u) return static_cast<std::uint16_t>(u >> 16); // overflowed float: infinity
    // round to nearest even on the float (x is compared exactly below)
    std::uint32_t lo = u & 0xFFFF0000u, hi = lo + 0x10000u;
    const double dl = std::fabs(static_cast<double>(std::bit_cast<float>(lo)) - x);
    const double dh = std::fabs(static_cast<double>(std::bit_cast<float>(hi)) - x);
    if (dl < dh || (dl == dh && ((lo >> 16) & 1u) == 0)) return static_cast<std::uint16_t>(lo >> 16);
    return static_cast<std::uint16_t>(hi >> 16);
}
inline double bf16_value(std::uint16_t b) { return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16); }
inline double round_bf16(double x) { return bf16_value(bf16_bits(x)); }

/// Distance in bf16 steps between two bf16 values of the same sign (order-preserving codes).
inline int bf16_steps(std::uint16_t a, std::uint16_t b) {
    auto ord = [](std::uint16_t v) { return (v & 0x8000u) ? -static_cast<int>(v & 0x7FFFu) : static_cast<int>(v); };
    return std::abs(ord(a) - ord(b));
}

inline bool is_prime(std::int64_t n) {
    if (n < 2) return false;
    for (std::int64_t d = 2; d * d <= n; ++d)
        if (n % d == 0) return false;
    return true;
}

/// Spec section 4: for each layer, order and head, the smallest untaken prime above the
/// candidate, which restarts at start - 1 for every (layer, order). [layer][order][head].
inline std::vector<std::vector<std::vector<std::int64_t>>> primes(const std::vector<std::int64_t>& layers, int n, int k,
                                                                  std::int64_t start) {
    std::set<std::int64_t> taken;
    std::vector<std::vector<std::vector<std::int64_t>>> out;
    for (std::size_t l = 0; l < layers.size(); ++l) {
        out.emplace_back();
        for (int order = 2; order <= n; ++order) {
            out.back().emplace_back();
            std::int64_t cand = start - 1;
            for (int h = 0; h < k; ++h) {
                std::int64_t p = cand + 1;
                while (!is_prime(p) || taken.count(p)) ++p;
                taken.insert(p);
                out.back().back().push_back(p);
                cand = p;
            }
        }
    }
    return out;
}

/// Spec section 4: row ids [B, T, (N-1)K] of raw ids with a token mask (0 = dead), sticky blocking.
inline std::vector<std::int64_t> row_ids(const std::vector<std::int64_t>& lookup, const std::vector<std::int64_t>& raw,
                                         const std::vector<std::uint8_t>& mask, std::size_t batch, std::size_t seq,
                                         const std::vector<std::int64_t>& mult,
                                         const std::vector<std::vector<std::int64_t>>& layer_primes, std::int64_t pad) {
    const std::size_t n = mult.size(), k = layer_primes[0].size();
    std::vector<std::int64_t> offsets;
    std::int64_t total = 0;
    for (const auto& order : layer_primes)
        for (std::int64_t p : order) {
            offsets.push_back(total);
            total += p;
        }
    std::vector<std::int64_t> out;
    for (std::size_t b = 0; b < batch; ++b)
        for (std::size_t p = 0; p < seq; ++p) {
            std::vector<std::int64_t> slot(n);
            bool blocked = false;
            for (std::size_t s = 0; s < n; ++s) {
                blocked = blocked || s > p || (!mask.empty() && mask[b * seq + p - s] == 0);
                slot[s] = blocked ? pad : lookup[static_cast<std::size_t>(raw[b * seq + p - s])];
            }
            std::int64_t h = slot[0] * mult[0];
            for (std::size_t j = 1; j < n; ++j) {
                h ^= slot[j] * mult[j];
                for (std::size_t head = 0; head < k; ++head)
                    out.push_back(h % layer_primes[j - 1][head] + offsets[(j - 1) * k + head]);
            }
        }
    return out;
}

// ---- the layer's tensors -------------------------------------------------------------------

/// The tensors of one V4.1 Engram layer as the oracle reads them (raw bytes).
struct layer_tensors {
    std::int64_t rows = 0, head_dim = 0, out_rows = 0, in_cols = 0, hc = 0, dim = 0;
    std::vector<std::uint8_t> embed, embed_scale, wkv, wkv_scale;
    std::vector<std::uint16_t> q, k; // bf16 bits [hc, dim]
};

inline std::vector<std::uint8_t> bytes_of(const engram::tensor_view& t) {
    const auto* p = reinterpret_cast<const std::uint8_t*>(t.bytes.data());
    return {p, p + t.bytes.size()};
}
inline std::vector<std::uint16_t> halves_of(const engram::tensor_view& t) {
    std::vector<std::uint16_t> v(t.bytes.size() / 2);
    std::memcpy(v.data(), t.bytes.data(), v.size() * 2);
    return v;
}

inline layer_tensors read_layer(const engram::safetensors_file& f, std::int64_t id) {
    const std::string p = "layers." + std::to_string(id) + ".engram.";
    layer_tensors t;
    const auto& e = f.at(p + "embed.weight");
    t.rows = e.shape[0];
    t.head_dim = e.shape[1];
    t.embed = bytes_of(e);
    t.embed_scale = bytes_of(f.at(p + "embed.scale"));
    const auto& w = f.at(p + "wkv.weight");
    t.out_rows = w.shape[0];
    t.in_cols = w.shape[1];
    t.wkv = bytes_of(w);
    t.wkv_scale = bytes_of(f.at(p + "wkv.scale"));
    const auto& q = f.at(p + "q_weight");
    t.hc = q.shape[0];
    t.dim = q.shape[1];
    t.q = halves_of(q);
    t.k = halves_of(f.at(p + "k_weight"));
    return t;
}

/// Spec section 5.1: value i of row r, bf16(e4m3(w) * 2^(s - 127)) (b = 255: NaN).
inline double row_value(const layer_tensors& t, std::int64_t r, std::int64_t i) {
    const std::uint8_t s = t.embed_scale[static_cast<std::size_t>(r * (t.head_dim / 32) + i / 32)];
    if (s == 255) return std::nan("");
    return round_bf16(e4m3(t.embed[static_cast<std::size_t>(r * t.head_dim + i)]) * std::ldexp(1.0, s - 127));
}

/// Spec section 5: the layer on one token's rows and hidden state [hc, dim] (bf16 bits) ->
/// out bf16 bits [hc, dim].
inline std::vector<std::uint16_t> forward_token(const layer_tensors& t, const std::int64_t* rows, std::size_t heads,
                                                const std::uint16_t* hidden, bool live, double eps) {
    const auto d = static_cast<std::size_t>(t.head_dim), in = static_cast<std::size_t>(t.in_cols);
    std::vector<double> e(heads * d);
    for (std::size_t h = 0; h < heads; ++h)
        for (std::size_t i = 0; i < d; ++i) e[h * d + i] = row_value(t, rows[h], static_cast<std::int64_t>(i));
    // act_quant per 32 values
    for (std::size_t j = 0; j < in; j += 32) {
        double amax = 1e-4;
        for (std::size_t i = j; i < j + 32 && i < in; ++i) amax = std::max(amax, std::fabs(e[i]));
        const double scale = std::ldexp(
            1.0, static_cast<int>(std::ceil(std::log2(static_cast<double>(static_cast<float>(amax)) / 448.0))));
        for (std::size_t i = j; i < j + 32 && i < in; ++i)
            e[i] = round_e4m3(std::clamp(e[i] / scale, -448.0, 448.0)) * scale;
    }
    const auto out_rows = static_cast<std::size_t>(t.out_rows), sc = (in + 31) / 32;
    std::vector<double> kv(out_rows);
    for (std::size_t o = 0; o < out_rows; ++o) {
        double acc = 0;
        for (std::size_t i = 0; i < in; ++i)
            acc += e4m3(t.wkv[o * in + i]) * std::ldexp(1.0, t.wkv_scale[(o / 32) * sc + i / 32] - 127) * e[i];
        kv[o] = round_bf16(acc);
    }
    const auto dim = static_cast<std::size_t>(t.dim), hc = static_cast<std::size_t>(t.hc);
    std::vector<std::uint16_t> out(hc * dim);
    for (std::size_t j = 0; j < hc; ++j) {
        const std::uint16_t* h = hidden + j * dim;
        const double* key = kv.data() + j * dim;
        const double* value = kv.data() + hc * dim;
        double hh = 0, kk = 0, dot = 0;
        for (std::size_t c = 0; c < dim; ++c) {
            const double hv = bf16_value(h[c]);
            const double w =
                static_cast<double>(static_cast<float>(bf16_value(t.q[j * dim + c]) * bf16_value(t.k[j * dim + c])));
            hh += hv * hv;
            kk += key[c] * key[c];
            dot += hv * w * key[c];
        }
        const double rstd = 1.0 / std::sqrt(hh / dim + eps) / std::sqrt(kk / dim + eps);
        dot = dot * rstd / std::sqrt(static_cast<double>(dim));
        const double root = std::sqrt(std::max(std::fabs(dot), 1e-6));
        double g = 1.0 / (1.0 + std::exp(dot > 0 ? -root : root));
        if (!live) g = 0;
        for (std::size_t c = 0; c < dim; ++c)
            out[j * dim + c] = live ? bf16_bits(bf16_value(h[c]) + g * value[c]) : h[c];
    }
    return out;
}

// ---- a scaled-down checkpoint directory ----------------------------------------------------

/// A config in inference/config.json's names (engram_pad_id, dim, norm_eps).
inline nlohmann::json inference_dialect(nlohmann::json j) {
    for (const auto& [hf, inference] : {std::pair<const char*, const char*>{"engram_pad_token_id", "engram_pad_id"},
                                        {"hidden_size", "dim"},
                                        {"rms_norm_eps", "norm_eps"}}) {
        j[inference] = j[hf];
        j.erase(hf);
    }
    return j;
}

/// What `write_checkpoint` puts in the directory.
struct checkpoint_spec {
    nlohmann::json text_config;     ///< the Engram keys (HF names)
    fs::path tokenizer;             ///< copied to tokenizer.json, if not empty
    bool inference_dialect = false; ///< write inference/config.json's names instead
};

/// Random FP8 layer tensors of `rows` rows (scale bytes near 2^-8 .. 2^-4, like trained ones).
inline void add_random_layer(engram::safetensors_writer& w, std::int64_t id, std::int64_t rows, std::int64_t head_dim,
                             std::int64_t out_rows, std::int64_t in_cols, std::int64_t hc, std::int64_t dim,
                             std::uint64_t seed, bool embed_only, bool weights_only) {
    std::mt19937_64 rng(seed);
    auto codes = [&](std::size_t n) {
        std::vector<std::uint8_t> v(n);
        for (auto& c : v) {
            c = static_cast<std::uint8_t>(rng());
            if ((c & 0x7F) == 0x7F) c = 0x40; // no NaN codes
        }
        return v;
    };
    auto scales = [&](std::size_t n, int lo) {
        std::vector<std::uint8_t> v(n);
        for (auto& s : v) s = static_cast<std::uint8_t>(lo + static_cast<int>(rng() % 4));
        return v;
    };
    auto as_bytes = [](const std::vector<std::uint8_t>& v) {
        return std::span<const std::byte>(reinterpret_cast<const std::byte*>(v.data()), v.size());
    };
    const std::string p = "layers." + std::to_string(id) + ".engram.";
    if (!weights_only) {
        w.add(p + "embed.weight", engram::dtype::f8_e4m3, {rows, head_dim},
              as_bytes(codes(static_cast<std::size_t>(rows * head_dim))));
        w.add(p + "embed.scale", engram::dtype::f8_e8m0, {rows, head_dim / 32},
              as_bytes(scales(static_cast<std::size_t>(rows * head_dim / 32), 119)));
    }
    if (embed_only) return;
    w.add(p + "wkv.weight", engram::dtype::f8_e4m3, {out_rows, in_cols},
          as_bytes(codes(static_cast<std::size_t>(out_rows * in_cols))));
    w.add(p + "wkv.scale", engram::dtype::f8_e8m0, {(out_rows + 31) / 32, (in_cols + 31) / 32},
          as_bytes(scales(static_cast<std::size_t>((out_rows + 31) / 32 * ((in_cols + 31) / 32)), 115)));
    std::vector<std::uint16_t> qk(static_cast<std::size_t>(hc * dim));
    std::normal_distribution<float> nd(1.0f, 0.1f);
    for (auto& v : qk) v = bf16_bits(nd(rng));
    w.add_bf16(p + "q_weight", {hc, dim}, qk);
    for (auto& v : qk) v = bf16_bits(nd(rng));
    w.add_bf16(p + "k_weight", {hc, dim}, qk);
}

/// Writes a checkpoint directory in V4.1's layout: config.json (text_config, or
/// inference/config.json's names), model.safetensors.index.json and two shards (layer 1's
/// tensors copied from the golden case; the second layer random; the row tables in the last
/// shard, as in the release), and tokenizer.json.
inline void write_checkpoint(const fs::path& dir, const checkpoint_spec& spec) {
    fs::create_directories(dir);
    const auto golden = engram::safetensors_file::open(golden_case_path());
    const auto& cfg = spec.text_config;
    const auto ids = cfg.at("engram_layer_ids").get<std::vector<std::int64_t>>();
    const auto rows = cfg.at("engram_num_embeddings").get<std::vector<std::int64_t>>();
    // Shapes from the config, or the golden case's where a test has removed a key.
    const std::int64_t hd = cfg.value("engram_head_dim", 256), dim = cfg.value("hidden_size", 64),
                       hc = cfg.value("hc_mult", 4);
    const std::int64_t in = (cfg.value("engram_max_ngram_size", 4) - 1) * cfg.value("engram_n_heads", 3) * hd;
    engram::safetensors_writer dense, tables; // shard 1: weights; shard 2: row tables
    nlohmann::json weight_map = nlohmann::json::object();
    dense.add_bf16("embed.weight", {4, dim}, std::vector<std::uint16_t>(static_cast<std::size_t>(4 * dim), 0x3F80));
    weight_map["embed.weight"] = "model-00001-of-00002.safetensors";
    for (std::size_t l = 0; l < ids.size(); ++l) {
        const std::string p = "layers." + std::to_string(ids[l]) + ".engram.";
        if (ids[l] == 1 && golden.contains(p + "embed.weight")) {
            for (const char* n : {"wkv.weight", "wkv.scale", "q_weight", "k_weight"}) dense.add(golden.at(p + n));
            for (const char* n : {"embed.weight", "embed.scale"}) tables.add(golden.at(p + n));
        } else {
            add_random_layer(dense, ids[l], rows[l], hd, dim * (hc + 1), in, hc, dim,
                             100 + static_cast<std::uint64_t>(l), false, true);
            add_random_layer(tables, ids[l], rows[l], hd, dim * (hc + 1), in, hc, dim,
                             200 + static_cast<std::uint64_t>(l), true, false);
        }
        for (const char* n : {"wkv.weight", "wkv.scale", "q_weight", "k_weight"})
            weight_map[p + n] = "model-00001-of-00002.safetensors";
        for (const char* n : {"embed.weight", "embed.scale"}) weight_map[p + n] = "model-00002-of-00002.safetensors";
    }
    dense.write(dir / "model-00001-of-00002.safetensors");
    tables.write(dir / "model-00002-of-00002.safetensors");
    nlohmann::json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}};
    std::ofstream(dir / "model.safetensors.index.json") << index.dump(2);
    if (spec.inference_dialect) {
        const nlohmann::json j = inference_dialect(cfg);
        fs::create_directories(dir / "inference");
        std::ofstream(dir / "inference" / "config.json") << j.dump(2);
        std::ofstream(dir / "config.json") << nlohmann::json{{"model_type", "deepseek_v41"}}.dump(2);
    } else {
        nlohmann::json top = {{"architectures", {"DeepseekV41ForConditionalGeneration"}},
                              {"model_type", "deepseek_v41"},
                              {"image_token_id", 129264},
                              {"text_config", cfg}};
        std::ofstream(dir / "config.json") << top.dump(2);
    }
    if (!spec.tokenizer.empty())
        fs::copy_file(spec.tokenizer, dir / "tokenizer.json", fs::copy_options::overwrite_existing);
}

/// The golden case's config (HF text_config keys plus layer_id).
inline nlohmann::json golden_config() {
    const auto f = engram::safetensors_file::open(golden_case_path());
    return nlohmann::json::parse(*f.find_metadata("config"));
}

} // namespace v41_test
