// A tiny host transformer with two Engram layers: how a model composes engram::layer for a whole
// sequence (the prefill) and token by token (decoding with a KV cache and the Engram decode
// states), and a check that both paths agree. Random weights: the point is the API, not the text.
#include <engram/layer.hpp>

#include <Eigen/Core>

#include <algorithm> // for max
#include <cmath>     // for sqrt, exp, fabs
#include <cstdio>    // for printf
#include <random>    // for mt19937_64, normal_distribution
#include <span>      // for span
#include <vector>    // for vector

namespace {

using engram::row_matrix; // row-major float matrix, [tokens, width]
using row_vector = Eigen::RowVectorXf;

constexpr std::size_t vocab_size = 1000;
constexpr Eigen::Index width = 64;      // H: the model width
constexpr Eigen::Index ffn = 4 * width; // MLP width
constexpr std::size_t num_blocks = 4;
constexpr std::size_t prompt_len = 48, gen_len = 32;

row_matrix random_matrix(std::mt19937_64& rng, Eigen::Index rows, Eigen::Index cols, float stddev) {
    std::normal_distribution<float> normal(0.0f, stddev);
    row_matrix w(rows, cols);
    for (Eigen::Index i = 0; i < w.size(); ++i) w.data()[i] = normal(rng);
    return w;
}

/// RMSNorm of every row: x / sqrt(mean(x^2) + eps) * w.
row_matrix rms_norm(const row_matrix& x, const row_vector& w) {
    row_matrix y(x.rows(), x.cols());
    for (Eigen::Index r = 0; r < x.rows(); ++r)
        y.row(r) = x.row(r).cwiseProduct(w) / std::sqrt(x.row(r).squaredNorm() / static_cast<float>(width) + 1e-6f);
    return y;
}

struct block_weights {
    row_vector norm1, norm2;   // pre-attention and pre-MLP RMSNorm weights
    row_matrix wq, wk, wv, wo; // single-head attention, [H, H] each (PyTorch layout: y = x W^T)
    row_matrix w_up, w_down;   // MLP, [F, H] and [H, F]
};

/// The host model. The Engram layers live in a vector that is filled once and never resized:
/// a decode state refers to its layer, which must stay in place while the state is used.
struct model {
    row_matrix embedding;                 // [V, H]; also the output projection (tied)
    std::vector<block_weights> blocks;    // num_blocks
    row_vector final_norm;                // [H]
    std::vector<engram::layer<>> engrams; // reference policies: reference gate and fusion
    std::vector<int> engram_before;       // block b -> index into engrams, or -1
};

model make_model(std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    const float s = 1.0f / std::sqrt(static_cast<float>(width));
    model m;
    m.embedding = random_matrix(rng, static_cast<Eigen::Index>(vocab_size), width, 0.1f);
    for (std::size_t b = 0; b < num_blocks; ++b)
        m.blocks.push_back({row_vector::Ones(width), row_vector::Ones(width), random_matrix(rng, width, width, s),
                            random_matrix(rng, width, width, s), random_matrix(rng, width, width, s),
                            random_matrix(rng, width, width, s), random_matrix(rng, ffn, width, s),
                            random_matrix(rng, width, ffn, 1.0f / std::sqrt(static_cast<float>(ffn)))});
    m.final_norm = row_vector::Ones(width);

    // Two Engram layers, before blocks 1 and 3. Every layer of a model shares one hash_config
    // (the prime search walks all of layer_ids); layer_id says which one each layer is.
    engram::layer_config cfg;
    cfg.hash.table_size_per_ngram = {5000, 5000};
    cfg.hash.max_ngram = 3;        // orders 2 and 3
    cfg.hash.heads_per_ngram = 4;  // K
    cfg.hash.embed_per_ngram = 64; // E: d = 16 per head, memory width D = 128
    cfg.hash.layer_ids = {1, 3};
    cfg.hidden = width;  // H
    cfg.branches = 1;    // M = 1: an ordinary residual stream
    cfg.kernel_size = 4; // Kc of the short convolution (dilation N = 3)
    const auto vocab = engram::canonical_table::identity(vocab_size);
    m.engrams.reserve(cfg.hash.layer_ids.size());
    m.engram_before.assign(num_blocks, -1);
    for (const std::int64_t id : cfg.hash.layer_ids) {
        cfg.layer_id = id;
        m.engram_before[static_cast<std::size_t>(id)] = static_cast<int>(m.engrams.size());
        m.engrams.emplace_back(cfg, vocab).randomize(seed + static_cast<std::uint64_t>(id), 0.1f);
    }
    return m;
}

/// Causal attention of one query over the first `n` cached keys and values.
row_vector attend(const row_vector& q, const row_matrix& k, const row_matrix& v, Eigen::Index n) {
    Eigen::VectorXf p = k.topRows(n) * q.transpose() / std::sqrt(static_cast<float>(width));
    p = (p.array() - p.maxCoeff()).exp();
    return (p.transpose() * v.topRows(n)) / p.sum();
}

row_matrix mlp(const row_matrix& a, const block_weights& w) {
    const row_matrix u = a * w.w_up.transpose();
    const row_matrix act = (u.array() / (1.0f + (-u.array()).exp())).matrix(); // SiLU
    return act * w.w_down.transpose();
}

/// Per-sequence inference state: a KV cache per block and a decode state per Engram layer.
struct session {
    std::vector<row_matrix> keys, values; // [capacity, H] per block
    Eigen::Index length = 0;              // tokens in the caches
    std::vector<engram::layer<>::decode_state> engram;
};

session new_session(const model& m, Eigen::Index capacity) {
    session s;
    s.keys.assign(num_blocks, row_matrix(capacity, width));
    s.values.assign(num_blocks, row_matrix(capacity, width));
    for (const auto& layer : m.engrams) s.engram.push_back(layer.new_decode_state());
    return s;
}

/// The whole sequence at once; returns the final hidden states [T, H]. With a session, this is
/// the prefill: it also fills the KV caches, and each Engram layer's `prefill` leaves its decode
/// state positioned after the prompt (n-gram window and convolution history).
row_matrix run_sequence(const model& m, std::span<const engram::token_id> ids, session* s, bool verbose) {
    const auto t_len = static_cast<Eigen::Index>(ids.size());
    row_matrix x(t_len, width), y(t_len, width);
    for (Eigen::Index t = 0; t < t_len; ++t) x.row(t) = m.embedding.row(ids[static_cast<std::size_t>(t)]);

    for (std::size_t b = 0; b < num_blocks; ++b) {
        if (const int e = m.engram_before[b]; e >= 0) {
            // The Engram layer reads the residual stream x ([B=1, T, M=1, H]) and the raw ids.
            const auto& layer = m.engrams[static_cast<std::size_t>(e)];
            const std::span<const float> hidden(x.data(), static_cast<std::size_t>(x.size()));
            const std::span<float> out(y.data(), static_cast<std::size_t>(y.size()));
            if (s != nullptr)
                layer.prefill(s->engram[static_cast<std::size_t>(e)], ids, hidden, out);
            else
                layer.forward(ids, 1, ids.size(), hidden, out);
            // Reference fusion: the layer returns Y; the HOST adds it to the residual stream,
            // before the block's attention.
            x += y;
            if (verbose) std::printf("  engram layer %zu: |Y| = %8.4f\n", b, static_cast<double>(y.norm()));
        }
        const block_weights& w = m.blocks[b];
        const row_matrix a = rms_norm(x, w.norm1);
        const row_matrix q = a * w.wq.transpose(), k = a * w.wk.transpose(), v = a * w.wv.transpose();
        row_matrix att(t_len, width);
        for (Eigen::Index t = 0; t < t_len; ++t) att.row(t) = attend(q.row(t), k, v, t + 1);
        x += att * w.wo.transpose();
        x += mlp(rms_norm(x, w.norm2), w);
        if (s != nullptr) {
            s->keys[b].topRows(t_len) = k;
            s->values[b].topRows(t_len) = v;
        }
        if (verbose) std::printf("  block %zu:        |x| = %8.4f\n", b, static_cast<double>(x.norm()));
    }
    if (s != nullptr) s->length = t_len;
    return rms_norm(x, m.final_norm);
}

/// One new token of a sequence whose earlier tokens are in `s`: its final hidden state [1, H].
/// Each Engram layer's `decode_step` pushes the token into its n-gram window, reads its rows and
/// runs the gate and the causal convolution from the state's history: the same Y the whole
/// sequence would give at this position.
row_matrix decode_token(const model& m, session& s, engram::token_id id) {
    row_matrix x = m.embedding.row(id), y(1, width);
    const Eigen::Index pos = s.length;
    for (std::size_t b = 0; b < num_blocks; ++b) {
        if (const int e = m.engram_before[b]; e >= 0) {
            const auto i = static_cast<std::size_t>(e);
            m.engrams[i].decode_step(s.engram[i], id, std::span<const float>(x.data(), width),
                                     std::span<float>(y.data(), width));
            x += y; // the host adds Y, as in the whole-sequence path
        }
        const block_weights& w = m.blocks[b];
        const row_matrix a = rms_norm(x, w.norm1);
        s.keys[b].row(pos) = a * w.wk.transpose(); // append this token to the KV cache
        s.values[b].row(pos) = a * w.wv.transpose();
        const row_vector q = a * w.wq.transpose();
        x += attend(q, s.keys[b], s.values[b], pos + 1) * w.wo.transpose();
        x += mlp(rms_norm(x, w.norm2), w);
    }
    s.length = pos + 1;
    return rms_norm(x, m.final_norm);
}

/// Tied output projection and greedy choice.
row_vector logits_of(const model& m, const row_matrix& h) { return h * m.embedding.transpose(); }
engram::token_id argmax(const row_vector& logits) {
    Eigen::Index best = 0;
    logits.maxCoeff(&best);
    return static_cast<engram::token_id>(best);
}

/// max |a - b| / max |b|.
double relative_error(const row_vector& a, const row_vector& b) {
    return static_cast<double>((a - b).cwiseAbs().maxCoeff() / b.cwiseAbs().maxCoeff());
}

} // namespace

int main() {
    const model m = make_model(2024);
    std::mt19937_64 rng(7);
    std::vector<engram::token_id> ids(prompt_len);
    for (auto& t : ids) t = static_cast<engram::token_id>(rng() % vocab_size);

    // 1. Prefill: the prompt in one pass, filling the KV caches and the Engram decode states.
    session s = new_session(m, static_cast<Eigen::Index>(prompt_len + gen_len));
    std::printf("prefill, %zu tokens (Frobenius norms over [T, H]):\n", prompt_len);
    const row_matrix prompt_hidden = run_sequence(m, ids, &s, true);
    row_vector logits = logits_of(m, prompt_hidden.bottomRows(1));

    // 2. Greedy decoding, one token at a time (untrained weights: expect repeats). Every generated
    //    token is fed back, so the session ends up holding all prompt_len + gen_len tokens.
    std::vector<row_vector> streamed_hidden;
    std::printf("generated:");
    for (std::size_t i = 0; i < gen_len; ++i) {
        const engram::token_id next = argmax(logits);
        std::printf(" %lld", static_cast<long long>(next));
        ids.push_back(next);
        const row_matrix h = decode_token(m, s, next);
        streamed_hidden.push_back(h.row(0));
        logits = logits_of(m, h);
    }
    std::printf("\nengram decode states at position %zu and %zu\n", s.engram[0].position(), s.engram[1].position());

    // 3. The check: re-run the whole sequence (prompt + generated) without any state and
    //    compare every streamed position, and the last token's logits, with it.
    const row_matrix full = run_sequence(m, ids, nullptr, false);
    double worst = 0;
    bool same_tokens = true;
    for (std::size_t i = 0; i < gen_len; ++i) {
        const auto t = static_cast<Eigen::Index>(prompt_len + i);
        worst = std::max(worst, relative_error(streamed_hidden[i], full.row(t)));
        // The full pass would have chosen the same greedy token at every step.
        if (argmax(logits_of(m, full.row(t - 1))) != ids[prompt_len + i]) same_tokens = false;
    }
    const double last_hidden = relative_error(streamed_hidden.back(), full.bottomRows(1));
    const double last_logits = relative_error(logits, logits_of(m, full.bottomRows(1)));
    std::printf("decode vs full forward: last hidden %.3g, last logits %.3g, worst position %.3g (relative); "
                "same tokens: %s\n",
                last_hidden, last_logits, worst, same_tokens ? "yes" : "no");
    const bool ok = worst <= 1e-4 && last_logits <= 1e-4 && same_tokens;
    std::printf("%s\n", ok ? "OK" : "MISMATCH");
    return ok ? 0 : 1;
}
