// Streaming decode state and dead tokens: a brute-force model of the dead-token rule, push one by
// one against the batch hasher, fork, rollback, seed, reset and errors.
#include "support/catch.hpp"

#include <engram/engram.hpp>
#include <engram/ngram/decode_state.hpp>

#include <algorithm>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace {

// V = 300 raw ids folded onto V' = 200 canonical ids: raw t and t + 200 share canonical id t.
constexpr std::int64_t raw_vocab = 300;
constexpr std::int64_t canonical_vocab = 200;
constexpr std::int64_t dead = 250;      // the dead raw id (canonical 50)
constexpr std::int64_t dead_twin = 50;  // same canonical id as `dead`, but not dead
constexpr std::int64_t raw_pad_id = 17; // canonical 17

engram::canonical_table folded_vocab() {
    std::vector<std::int64_t> lookup(static_cast<std::size_t>(raw_vocab));
    for (std::size_t t = 0; t < lookup.size(); ++t) lookup[t] = static_cast<std::int64_t>(t) % canonical_vocab;
    return engram::canonical_table::from_lookup(lookup);
}

engram::layer_layout small_layout(int max_ngram, std::int64_t layer_id) {
    engram::hash_config cfg;
    cfg.max_ngram = max_ngram;
    cfg.table_size_per_ngram.assign(static_cast<std::size_t>(max_ngram - 1), 0);
    for (int i = 0; i < max_ngram - 1; ++i) cfg.table_size_per_ngram[static_cast<std::size_t>(i)] = 300 + 100 * i;
    cfg.heads_per_ngram = 3;
    cfg.embed_per_ngram = 12;
    cfg.layer_ids = {1, layer_id};
    cfg.pad_id = raw_pad_id;
    return engram::make_layout(cfg, layer_id, canonical_vocab, folded_vocab().canonical_pad_id(cfg.pad_id));
}

/// The dead-token rule written out longhand on raw ids: window slot k of position t reads pad if
/// t - k < 0 or some position in [t - k, t] holds the dead raw id, else the canonical id; then
/// multiply-XOR and floor modulo, plus the head offset. Output `[B, T, heads]` global rows.
std::vector<std::int64_t> brute_force_rows(const engram::layer_layout& l, const engram::canonical_table& vocab,
                                           const std::vector<std::int64_t>& raw, std::size_t batch, std::size_t seq,
                                           std::optional<std::int64_t> dead_token) {
    std::vector<std::int64_t> out;
    const auto k_heads = static_cast<std::size_t>(l.heads_per_order);
    const auto lookup = vocab.lookup();
    for (std::size_t b = 0; b < batch; ++b)
        for (std::size_t t = 0; t < seq; ++t)
            for (std::size_t oi = 0; oi < l.orders.size(); ++oi) {
                const int n = l.orders[oi];
                std::uint64_t mix = 0;
                for (int k = 0; k < n; ++k) {
                    const std::int64_t s = static_cast<std::int64_t>(t) - k;
                    bool is_pad = s < 0;
                    for (std::int64_t d = s < 0 ? 0 : s; !is_pad && d <= static_cast<std::int64_t>(t); ++d)
                        if (dead_token && raw[b * seq + static_cast<std::size_t>(d)] == *dead_token) is_pad = true;
                    const std::int64_t x =
                        is_pad ? l.pad : lookup[static_cast<std::size_t>(raw[b * seq + static_cast<std::size_t>(s)])];
                    mix ^= static_cast<std::uint64_t>(x) *
                           static_cast<std::uint64_t>(l.multipliers[static_cast<std::size_t>(k)]);
                }
                for (std::size_t j = 0; j < k_heads; ++j) {
                    const std::int64_t p = l.primes[oi * k_heads + j];
                    const auto m = static_cast<std::int64_t>(mix);
                    out.push_back(((m % p) + p) % p + l.offsets[oi * k_heads + j]);
                }
            }
    return out;
}

/// A random raw stream with dead tokens, twins of the dead token and the pad id sprinkled in.
std::vector<std::int64_t> random_stream(std::mt19937_64& rng, std::size_t len) {
    std::vector<std::int64_t> s(len);
    for (auto& x : s) {
        const auto r = rng() % 20;
        x = r == 0 ? dead : r == 1 ? dead_twin : r == 2 ? raw_pad_id : static_cast<std::int64_t>(rng() % raw_vocab);
    }
    return s;
}

/// Streams with fixed dead placements: at position 0, consecutive, last, twins only, none.
std::vector<std::vector<std::int64_t>> placements(std::mt19937_64& rng) {
    std::vector<std::vector<std::int64_t>> out;
    auto base = [&] {
        std::vector<std::int64_t> s(24);
        for (auto& x : s) x = 60 + static_cast<std::int64_t>(rng() % 140); // never dead nor a twin
        return s;
    };
    auto s = base();
    s[0] = dead;
    out.push_back(s); // dead first
    s = base();
    s[5] = s[6] = s[7] = dead;
    out.push_back(s); // a run of dead tokens
    s = base();
    s[0] = s[1] = dead;
    s[2] = dead_twin;
    out.push_back(s); // dead run at the start, then a twin
    s = base();
    s[23] = dead;
    out.push_back(s); // dead last
    s = base();
    s[3] = s[9] = s[10] = dead_twin;
    out.push_back(s); // twins only: no restart
    s = base();
    s[4] = dead;
    s[6] = dead; // dead tokens one apart
    s[12] = dead_twin;
    out.push_back(s);
    out.push_back(base()); // no dead token
    for (int i = 0; i < 6; ++i) out.push_back(random_stream(rng, 40));
    return out;
}

template <class Hasher>
std::vector<std::int64_t> rows_of(const Hasher& hasher, const engram::canonical_table& vocab,
                                  const std::vector<std::int64_t>& raw, std::optional<std::int64_t> dead_token) {
    std::vector<std::int64_t> out(raw.size() * hasher.num_heads());
    hasher.rows_tokens(vocab, raw, 1, raw.size(), out, dead_token);
    return out;
}

/// Pushes `raw` one by one and returns every position's rows, concatenated.
template <class State>
std::vector<std::int64_t> push_all(State& state, const std::vector<std::int64_t>& raw) {
    std::vector<std::int64_t> out(raw.size() * state.num_heads());
    for (std::size_t t = 0; t < raw.size(); ++t)
        state.push(raw[t], std::span(out).subspan(t * state.num_heads(), state.num_heads()));
    return out;
}

template <class Orders>
void check_streaming(int max_ngram) {
    const auto vocab = folded_vocab();
    const auto l = small_layout(max_ngram, 7);
    const engram::ngram_hasher<engram::multiply_xor_family, Orders> hasher(l);
    const std::size_t heads = hasher.num_heads();
    std::mt19937_64 rng(1234 + static_cast<unsigned>(max_ngram));
    const auto streams = placements(rng);

    SECTION("batch hashing with a dead token equals the brute-force rule") {
        for (const auto& s : streams) {
            CHECK(rows_of(hasher, vocab, s, dead) == brute_force_rows(l, vocab, s, 1, s.size(), dead));
            CHECK(rows_of(hasher, vocab, s, std::nullopt) == brute_force_rows(l, vocab, s, 1, s.size(), std::nullopt));
        }
        // A batch: a dead token in one row does not touch the others.
        std::vector<std::int64_t> batch;
        for (std::size_t i = 0; i < 4; ++i) batch.insert(batch.end(), streams[i].begin(), streams[i].end());
        std::vector<std::int64_t> rows(batch.size() * heads), local(batch.size() * heads);
        hasher.rows_tokens(vocab, batch, 4, 24, rows, dead);
        CHECK(rows == brute_force_rows(l, vocab, batch, 4, 24, dead));
        hasher.hash_tokens(vocab, batch, 4, 24, local, dead);
        for (std::size_t i = 0; i < rows.size(); ++i) REQUIRE(rows[i] == local[i] + l.offsets[i % heads]);
        // Without a dead token the new overloads equal the existing hash_tokens.
        std::vector<std::int64_t> old(batch.size() * heads), none(batch.size() * heads);
        hasher.hash_tokens(vocab, batch, 4, 24, old);
        hasher.hash_tokens(vocab, batch, 4, 24, none, std::nullopt);
        CHECK(old == none);
        hasher.rows_tokens(vocab, batch, 4, 24, rows);
        for (std::size_t i = 0; i < rows.size(); ++i) REQUIRE(rows[i] == old[i] + l.offsets[i % heads]);
    }

    SECTION("push one by one equals rows_tokens over the whole sequence") {
        for (const auto& s : streams) {
            for (std::optional<std::int64_t> d : {std::optional<std::int64_t>(dead), std::optional<std::int64_t>()}) {
                engram::ngram_state state(hasher, vocab, d);
                CHECK(push_all(state, s) == rows_of(hasher, vocab, s, d));
                CHECK(state.position() == s.size());
            }
        }
    }

    SECTION("fork is independent") {
        const auto& s = streams[7];
        engram::ngram_state state(hasher, vocab, dead);
        const std::vector<std::int64_t> head(s.begin(), s.begin() + 20);
        push_all(state, head);
        auto fork = state.fork();
        auto copy = state;
        std::vector<std::int64_t> tail_a(s.begin() + 20, s.end());
        std::vector<std::int64_t> tail_b = random_stream(rng, 15);
        tail_b[2] = dead;
        const auto got_b = push_all(fork, tail_b);
        const auto got_a = push_all(state, tail_a);
        auto whole_a = head, whole_b = head;
        whole_a.insert(whole_a.end(), tail_a.begin(), tail_a.end());
        whole_b.insert(whole_b.end(), tail_b.begin(), tail_b.end());
        const auto want_a = rows_of(hasher, vocab, whole_a, dead);
        const auto want_b = rows_of(hasher, vocab, whole_b, dead);
        CHECK(got_a ==
              std::vector<std::int64_t>(want_a.begin() + 20 * static_cast<std::ptrdiff_t>(heads), want_a.end()));
        CHECK(got_b ==
              std::vector<std::int64_t>(want_b.begin() + 20 * static_cast<std::ptrdiff_t>(heads), want_b.end()));
        CHECK(fork.position() == 35);
        CHECK(copy.position() == 20); // untouched by either
        CHECK(push_all(copy, tail_a) == got_a);
    }

    SECTION("rollback then re-push equals never having pushed") {
        for (std::size_t max_rb : {std::size_t{0}, std::size_t{1}, std::size_t{5}, std::size_t{64}}) {
            engram::ngram_state state(hasher, vocab, dead, max_rb);
            std::vector<std::int64_t> seq; // the tokens the state has now
            std::vector<std::int64_t> rows(heads);
            for (int step = 0; step < 400; ++step) {
                if (rng() % 4 == 0) {
                    const std::size_t k = static_cast<std::size_t>(rng() % (state.undoable() + 1));
                    state.rollback(k);
                    seq.resize(seq.size() - k);
                    REQUIRE(state.position() == seq.size());
                } else {
                    const auto r = rng() % 8;
                    const std::int64_t tok = r == 0   ? dead
                                             : r == 1 ? dead_twin
                                                      : static_cast<std::int64_t>(rng() % raw_vocab);
                    state.push(tok, rows);
                    seq.push_back(tok);
                    const auto want = brute_force_rows(l, vocab, seq, 1, seq.size(), dead);
                    INFO("max_rollback " << max_rb << " step " << step);
                    REQUIRE(rows ==
                            std::vector<std::int64_t>(want.end() - static_cast<std::ptrdiff_t>(heads), want.end()));
                }
                REQUIRE(state.undoable() <= max_rb);
            }
        }
        // Rolling back across a run of dead tokens restores the context before them.
        engram::ngram_state state(hasher, vocab, dead, 8);
        const std::vector<std::int64_t> s = {70, 71, 72, dead, dead, 73, dead_twin};
        push_all(state, {70, 71, 72});
        const std::vector<std::int64_t> ctx(state.context().begin(), state.context().end());
        push_all(state, {dead, dead, 73, dead_twin});
        state.rollback(4);
        CHECK(std::vector<std::int64_t>(state.context().begin(), state.context().end()) == ctx);
        const auto want = rows_of(hasher, vocab, s, dead);
        CHECK(push_all(state, {dead, dead, 73, dead_twin}) ==
              std::vector<std::int64_t>(want.begin() + 3 * static_cast<std::ptrdiff_t>(heads), want.end()));
    }

    SECTION("seed(prefix) then push equals pushing everything") {
        for (const auto& s : streams) {
            const auto want = rows_of(hasher, vocab, s, dead);
            for (std::size_t split = 0; split <= s.size(); ++split) {
                engram::ngram_state state(hasher, vocab, dead, 4);
                push_all(state, {5, 6, 7}); // seed replaces whatever was there
                state.seed(std::span(s).first(split));
                REQUIRE(state.position() == split);
                REQUIRE(state.undoable() == 0);
                const std::vector<std::int64_t> rest(s.begin() + static_cast<std::ptrdiff_t>(split), s.end());
                const auto got = push_all(state, rest);
                INFO("split " << split);
                REQUIRE(got == std::vector<std::int64_t>(want.begin() + static_cast<std::ptrdiff_t>(split * heads),
                                                         want.end()));
                // Roll back to the seed point (at most 4) and push again: same rows.
                const std::size_t k = std::min<std::size_t>(rest.size(), 4);
                state.rollback(k);
                CHECK_THROWS_AS(state.rollback(1), engram::input_error);
                const std::vector<std::int64_t> again(rest.end() - static_cast<std::ptrdiff_t>(k), rest.end());
                REQUIRE(push_all(state, again) ==
                        std::vector<std::int64_t>(got.end() - static_cast<std::ptrdiff_t>(k * heads), got.end()));
            }
        }
    }
}

} // namespace

TEST_CASE("decode state, orders<2, 3>", "[decode_state]") { check_streaming<engram::orders<2, 3>>(3); }

TEST_CASE("decode state, orders<2, 3, 4>", "[decode_state]") { check_streaming<engram::orders<2, 3, 4>>(4); }

TEST_CASE("decode state with the xxh3 family follows the batch hasher", "[decode_state][xxh3]") {
    const auto vocab = folded_vocab();
    const engram::ngram_hasher<engram::xxh3_family, engram::orders<2, 3, 4>> hasher(small_layout(4, 7));
    std::mt19937_64 rng(99);
    const auto s = random_stream(rng, 60);
    engram::ngram_state state(hasher, vocab, dead);
    CHECK(push_all(state, s) == rows_of(hasher, vocab, s, dead));
}

TEST_CASE("decode state: rollback limits, reset, context", "[decode_state]") {
    const auto vocab = folded_vocab();
    const auto l = small_layout(3, 7);
    const engram::ngram_hasher<> hasher(l);
    engram::ngram_state state(hasher, vocab, dead, 5);
    std::vector<std::int64_t> rows(hasher.num_heads());

    CHECK(state.position() == 0);
    CHECK(state.max_rollback() == 5);
    CHECK(state.dead_token() == std::optional<std::int64_t>(dead));
    CHECK_NOTHROW(state.rollback(0));
    CHECK_THROWS_AS(state.rollback(1), engram::input_error); // nothing pushed yet
    push_all(state, {80, 81, 82});
    CHECK_THROWS_AS(state.rollback(4), engram::input_error);
    CHECK(state.position() == 3); // unchanged by the failed rollback
    for (std::int64_t t = 0; t < 7; ++t) state.push(90 + t, rows);
    CHECK(state.undoable() == 5);
    try {
        state.rollback(6);
        FAIL("no error");
    } catch (const engram::input_error& e) {
        CHECK(std::string(e.what()).find("max_rollback = 5") != std::string::npos);
    }
    state.rollback(5);
    CHECK(state.position() == 5);
    CHECK_THROWS_AS(state.rollback(1), engram::input_error);
    // The context after rollback is that of {80, 81, 82, 90, 91}.
    CHECK(std::vector<std::int64_t>(state.context().begin(), state.context().end()) ==
          std::vector<std::int64_t>{91, 90});

    // Context: pad at the start and after a dead token; a twin is an ordinary token.
    engram::ngram_state fresh(hasher, vocab, dead);
    CHECK(std::vector<std::int64_t>(fresh.context().begin(), fresh.context().end()) ==
          std::vector<std::int64_t>{l.pad, l.pad});
    fresh.push(dead_twin, rows);
    CHECK(fresh.context()[0] == 50);
    fresh.push(dead, rows);
    CHECK(std::vector<std::int64_t>(fresh.context().begin(), fresh.context().end()) ==
          std::vector<std::int64_t>{l.pad, l.pad});
    fresh.push(230, rows);
    CHECK(std::vector<std::int64_t>(fresh.context().begin(), fresh.context().end()) ==
          std::vector<std::int64_t>{30, l.pad});

    // reset: back to a new sequence.
    state.reset();
    CHECK(state.position() == 0);
    CHECK(state.undoable() == 0);
    const std::vector<std::int64_t> s = {dead_twin, 3, dead, 4, 5};
    CHECK(push_all(state, s) == rows_of(hasher, vocab, s, dead));

    // seed: dead tokens long before the end, and within the last N - 1.
    for (const std::vector<std::int64_t>& prefix :
         {std::vector<std::int64_t>{dead, 1, 2, 3, 4, 5}, std::vector<std::int64_t>{1, 2, 3, dead, 4},
          std::vector<std::int64_t>{1, 2, 3, 4, dead}, std::vector<std::int64_t>{dead}, std::vector<std::int64_t>{}}) {
        engram::ngram_state seeded(hasher, vocab, dead);
        seeded.seed(prefix);
        engram::ngram_state pushed(hasher, vocab, dead);
        push_all(pushed, prefix);
        CHECK(std::vector<std::int64_t>(seeded.context().begin(), seeded.context().end()) ==
              std::vector<std::int64_t>(pushed.context().begin(), pushed.context().end()));
        CHECK(push_all(seeded, {6, dead_twin, 7}) == push_all(pushed, {6, dead_twin, 7}));
    }
}

TEST_CASE("decode state and dead-token errors", "[decode_state]") {
    const auto vocab = folded_vocab();
    const auto l = small_layout(3, 7);
    const engram::ngram_hasher<> hasher(l);
    std::vector<std::int64_t> rows(hasher.num_heads(), -1);

    engram::ngram_state state(hasher, vocab, dead);
    push_all(state, {10, 11});
    try {
        state.push(raw_vocab, rows);
        FAIL("no error");
    } catch (const engram::input_error& e) {
        CHECK(std::string(e.what()).find("300") != std::string::npos);
        CHECK(std::string(e.what()).find("position 2") != std::string::npos);
    }
    CHECK_THROWS_AS(state.push(-1, rows), engram::input_error);
    CHECK_THROWS_AS(state.push(12, std::span(rows).first(2)), engram::input_error);
    std::vector<std::int64_t> too_many(hasher.num_heads() + 1);
    CHECK_THROWS_AS(state.push(12, too_many), engram::input_error);
    CHECK(rows[0] == -1); // nothing written
    CHECK(state.position() == 2);
    CHECK(state.undoable() == 2);
    // The failed pushes left no trace.
    const std::vector<std::int64_t> s = {10, 11, 12, 13};
    const auto want = rows_of(hasher, vocab, s, dead);
    CHECK(push_all(state, {12, 13}) ==
          std::vector<std::int64_t>(want.begin() + 2 * static_cast<std::ptrdiff_t>(hasher.num_heads()), want.end()));

    // seed validates the whole prefix first and names the position; the state is unchanged.
    const auto context = std::vector<std::int64_t>(state.context().begin(), state.context().end());
    try {
        state.seed(std::vector<std::int64_t>{1, 2, -5, 3});
        FAIL("no error");
    } catch (const engram::input_error& e) {
        CHECK(std::string(e.what()).find("position 2") != std::string::npos);
    }
    CHECK(state.position() == 4);
    CHECK(std::vector<std::int64_t>(state.context().begin(), state.context().end()) == context);

    // Construction: table of another V', dead token outside the vocabulary, huge max_rollback.
    using state_type = engram::ngram_state<engram::multiply_xor_family, engram::orders<2, 3>>;
    const auto other = engram::canonical_table::identity(199);
    CHECK_THROWS_AS(state_type(hasher, other), engram::config_error);
    CHECK_THROWS_AS(state_type(hasher, vocab, raw_vocab), engram::input_error);
    CHECK_THROWS_AS(state_type(hasher, vocab, -1), engram::input_error);
    CHECK_THROWS_AS(state_type(hasher, vocab, std::nullopt, state_type::max_supported_rollback + 1),
                    engram::config_error);

    // Batch overloads: raw id out of range names its position, nothing is written.
    std::vector<std::int64_t> out(3 * hasher.num_heads(), -1);
    try {
        hasher.rows_tokens(vocab, std::vector<std::int64_t>{5, 6, 300}, 1, 3, out, dead);
        FAIL("no error");
    } catch (const engram::input_error& e) {
        CHECK(std::string(e.what()).find("position 2") != std::string::npos);
    }
    CHECK(out[0] == -1);
    CHECK_THROWS_AS(hasher.hash_tokens(vocab, std::vector<std::int64_t>{5, -1, 7}, 1, 3, out, dead),
                    engram::input_error);
    CHECK_THROWS_AS(hasher.hash_tokens(vocab, std::vector<std::int64_t>{5, 6, 7}, 1, 3, out, raw_vocab),
                    engram::input_error);
    CHECK_THROWS_AS(hasher.rows_tokens(vocab, std::vector<std::int64_t>{5, 6, 7}, 3, 1, std::span(out).first(5), dead),
                    engram::input_error);
    CHECK_THROWS_AS(hasher.rows_tokens(vocab, std::vector<std::int64_t>{5, 6}, 1, 3, out), engram::input_error);
    CHECK_THROWS_AS(hasher.rows_tokens(other, std::vector<std::int64_t>{5, 6, 7}, 1, 3, out, dead),
                    engram::config_error);
    CHECK(out[0] == -1);
}
