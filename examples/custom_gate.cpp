// Plugging a user-defined gate into engram::layer through a policy bundle, and the production
// fusion (out = h + alpha v, with a token mask) next to the reference one.
#include <engram/layer.hpp>

#include <cmath>  // for exp, fabs
#include <cstdio> // for printf
#include <random> // for mt19937_64, normal_distribution
#include <vector> // for vector

namespace my {

/// A sigmoid with a temperature: alpha = sigmoid(s / T). A gate maps the score
/// s = <RMSNorm(k), RMSNorm(h)> / sqrt(H) to alpha; it must be default-constructible and a
/// noexcept function of s (the layer applies it once per token and branch).
struct tempered_gate {
    static constexpr float temperature = 0.25f; // T < 1: sharper than the paper's sigmoid(s)
    float operator()(float s) const noexcept { return 1.0f / (1.0f + std::exp(-s / temperature)); }
};

// The concept states the contract; a gate that does not fit it fails here, with the reason.
static_assert(engram::gate_policy<tempered_gate>);

/// A policy bundle: everything as in the reference except the gate.
struct tempered_policies : engram::layer_policies {
    using gate_type = tempered_gate;
};

/// The production fusion returns h + alpha v (residual inside, no convolution) and takes a mask.
struct production_policies : engram::layer_policies {
    using gate_type = tempered_gate;
    using fusion_type = engram::production_fusion;
};

} // namespace my

int main() {
    engram::layer_config cfg;
    cfg.hash.table_size_per_ngram = {3000, 3000};
    cfg.hash.heads_per_ngram = 4;
    cfg.hash.embed_per_ngram = 32;
    cfg.hash.layer_ids = {1};
    cfg.hidden = 32;
    cfg.branches = 1;
    const auto vocab = engram::canonical_table::identity(500);

    // The same weights (same seed) under two gates.
    engram::layer<> reference(cfg, vocab);
    engram::layer<my::tempered_policies> tempered(cfg, vocab);
    reference.randomize(11, 0.2f);
    tempered.randomize(11, 0.2f);

    const std::vector<engram::token_id> ids = {5, 17, 42, 17, 42, 99};
    const std::size_t t_len = ids.size(), h = 32;
    std::vector<float> hidden(t_len * h);
    std::mt19937_64 rng(3);
    std::normal_distribution<float> normal;
    for (float& x : hidden) x = normal(rng);

    std::vector<float> y_ref(hidden.size()), y_temp(hidden.size());
    reference.forward(ids, 1, t_len, hidden, y_ref);
    tempered.forward(ids, 1, t_len, hidden, y_temp);
    auto norm = [h](const std::vector<float>& v, std::size_t t) {
        double s = 0;
        for (std::size_t c = 0; c < h; ++c) s += static_cast<double>(v[t * h + c]) * v[t * h + c];
        return std::sqrt(s);
    };
    std::printf("token  |Y| reference gate  |Y| tempered gate\n");
    for (std::size_t t = 0; t < t_len; ++t)
        std::printf("%5lld  %18.5f  %17.5f\n", static_cast<long long>(ids[t]), norm(y_ref, t), norm(y_temp, t));

    // Production fusion: the layer adds to the residual itself. Token 2 is masked (e.g. an
    // image placeholder): its gate is zero, so its output is exactly its hidden state.
    engram::layer<my::production_policies> production(cfg, vocab);
    production.randomize(11, 0.2f);
    const std::vector<std::uint8_t> mask = {1, 1, 0, 1, 1, 1};
    std::vector<float> out(hidden.size());
    production.forward(ids, 1, t_len, hidden, out, mask);
    bool masked_is_identity = true, others_changed = true;
    for (std::size_t t = 0; t < t_len; ++t) {
        double diff = 0;
        for (std::size_t c = 0; c < h; ++c) diff += std::fabs(out[t * h + c] - hidden[t * h + c]);
        if (mask[t] == 0 && diff != 0.0) masked_is_identity = false;
        if (mask[t] != 0 && diff == 0.0) others_changed = false;
        std::printf("production, token %zu%s: sum |out - h| = %.5f\n", t, mask[t] ? "" : " (masked)", diff);
    }
    const bool ok = masked_is_identity && others_changed;
    std::printf("%s\n", ok ? "OK" : "MISMATCH");
    return ok ? 0 : 1;
}
