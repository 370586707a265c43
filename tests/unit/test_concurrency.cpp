// Concurrent readers (ctest label `concurrency`, run under ThreadSanitizer in CI): one table
// looked up from 8 threads through every storage policy, hashing and layer forwards on one
// const object from 8 threads, prefetch racing forward, and results that do not depend on the
// number of threads. Every concurrent result is compared bit for bit with a single-threaded one.
#include "support/catch.hpp"

#include <engram/engram.hpp>
#include <engram/io/table_file.hpp>
#include <engram/layer/checkpoint.hpp>
#include <engram/prefetch.hpp>
#include <engram/storage/cached.hpp>
#include <engram/storage/file.hpp>
#include <engram/storage/mmap.hpp>
#include <engram/storage/quantized.hpp>
#include <engram/storage/sharded.hpp>

#include <unistd.h> // for getpid

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace fs = std::filesystem;
using engram::row_id;

constexpr int threads = 8;

/// Runs `body(k)` on `n` threads at once (released together) and joins them.
void on_threads(int n, const std::function<void(int)>& body) {
    std::atomic<int> ready{0};
    std::vector<std::thread> pool;
    for (int k = 0; k < n; ++k)
        pool.emplace_back([&, k] {
            ++ready;
            while (ready.load() < n) std::this_thread::yield();
            body(k);
        });
    for (auto& t : pool) t.join();
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

/// A small layer layout's worth of rows (2 orders x 3 heads, rows of 32 values: fp8 blocks
/// fit) with random values, and batches of row ids: half from 64 hot rows, half uniform.
struct fixture {
    engram::layer_layout layout;
    std::size_t rows = 0, dim = 32;
    std::vector<float> values;
    std::vector<std::vector<row_id>> batches;

    std::span<const float> row(std::size_t r) const { return {values.data() + r * dim, dim}; }
};

const fixture& shared_fixture() {
    static const fixture f = [] {
        engram::hash_config cfg;
        cfg.table_size_per_ngram = {500, 700};
        cfg.heads_per_ngram = 3;
        cfg.embed_per_ngram = 96; // d = 32
        cfg.layer_ids = {1};
        fixture out;
        out.layout = engram::make_layout(cfg, 1, 1000, 2);
        out.rows = static_cast<std::size_t>(out.layout.total_rows);
        out.values.resize(out.rows * out.dim);
        std::mt19937_64 rng(5);
        std::normal_distribution<float> normal;
        for (auto& v : out.values) v = normal(rng);
        for (std::size_t b = 0; b < 16; ++b) {
            std::vector<row_id> ids(64 + 16 * b);
            for (auto& id : ids) {
                const std::uint64_t x = rng();
                id = static_cast<row_id>((x & 1) != 0 ? (x >> 1) % 64 * 37 % out.rows : (x >> 1) % out.rows);
            }
            out.batches.push_back(std::move(ids));
        }
        return out;
    }();
    return f;
}

template <class Table>
void fill(Table& t, const fixture& f) {
    for (std::size_t r = 0; r < f.rows; ++r) t.set_row(r, f.row(r));
}

template <class Row>
engram::dense_storage::table<Row> dense_of(const fixture& f) {
    engram::dense_storage::table<Row> t(f.rows, f.dim);
    fill(t, f);
    return t;
}

template <class Table>
std::vector<float> gathered(const Table& t, const std::vector<row_id>& ids) {
    std::vector<float> out(ids.size() * t.dim(), -7.0f);
    t.gather(std::span<const row_id>(ids), std::span<float>(out));
    return out;
}

/// A file (removed on destruction) holding a dense table's encoded rows after `header` bytes.
struct rows_file {
    fs::path path;
    std::uint64_t header = 100;
    template <class Table>
    rows_file(const Table& t, const char* stem) {
        static std::atomic<int> counter{0};
        path = fs::temp_directory_path() / ("engram_concurrency_" + std::string(stem) + "_" +
                                            std::to_string(::getpid()) + "_" + std::to_string(counter++));
        std::ofstream out(path, std::ios::binary);
        const std::string junk(header, 'h');
        out.write(junk.data(), static_cast<std::streamsize>(junk.size()));
        out.write(reinterpret_cast<const char*>(t.bytes()), static_cast<std::streamsize>(t.size_bytes()));
        REQUIRE(out.good());
    }
    rows_file(const rows_file&) = delete;
    rows_file& operator=(const rows_file&) = delete;
    ~rows_file() {
        std::error_code ec;
        fs::remove(path, ec);
    }
};

/// Every batch gathered from `threads` threads at once, each walking the batches in its own
/// order three times, equals the single-threaded gather of the same table; and that one equals
/// `expected` (the rows of a dense table of the same codec, gathered by a brute-force loop).
template <class Table>
void check_concurrent_gathers(const Table& table, const std::vector<std::vector<float>>& expected) {
    const fixture& f = shared_fixture();
    std::vector<std::vector<float>> serial;
    for (const auto& ids : f.batches) serial.push_back(gathered(table, ids));
    for (std::size_t b = 0; b < serial.size(); ++b) REQUIRE(same_bits(serial[b], expected[b]));

    std::atomic<int> mismatches{0}, checked{0};
    on_threads(threads, [&](int k) {
        for (int rep = 0; rep < 3; ++rep)
            for (std::size_t i = 0; i < f.batches.size(); ++i) {
                const std::size_t b =
                    (i * 5 + static_cast<std::size_t>(k) * 3 + static_cast<std::size_t>(rep)) % f.batches.size();
                if (!same_bits(gathered(table, f.batches[b]), serial[b])) ++mismatches;
                ++checked;
            }
    });
    CHECK(mismatches.load() == 0);
    CHECK(checked.load() == threads * 3 * static_cast<int>(f.batches.size()));
}

/// The rows of `ids` from the dense table `t`, copied row by row (the independent answer).
template <class Row>
std::vector<std::vector<float>> brute_force(const engram::dense_storage::table<Row>& t) {
    const fixture& f = shared_fixture();
    std::vector<std::vector<float>> out;
    std::vector<float> row(f.dim);
    for (const auto& ids : f.batches) {
        std::vector<float> e;
        for (const row_id id : ids) {
            const row_id one[1] = {id};
            t.gather(std::span<const row_id>(one, 1), std::span<float>(row));
            e.insert(e.end(), row.begin(), row.end());
        }
        out.push_back(std::move(e));
    }
    return out;
}

/// For f32 rows the independent answer is the fixture's values themselves.
std::vector<std::vector<float>> exact_rows() {
    const fixture& f = shared_fixture();
    std::vector<std::vector<float>> out;
    for (const auto& ids : f.batches) {
        std::vector<float> e;
        for (const row_id id : ids) {
            const auto r = f.row(static_cast<std::size_t>(id));
            e.insert(e.end(), r.begin(), r.end());
        }
        out.push_back(std::move(e));
    }
    return out;
}

std::string data(const char* name) { return std::string(ENGRAM_TEST_DATA_DIR) + "/" + name; }

struct golden_case {
    engram::safetensors_file file = engram::safetensors_file::open(data("forward_small.safetensors"));
    std::vector<std::int64_t> ids = file.at("input_ids").to_vector<std::int64_t>();
    std::vector<float> hidden = file.at("hidden_states").to_vector<float>();
    std::vector<float> output = file.at("output").to_vector<float>();
    std::size_t batch = static_cast<std::size_t>(file.at("input_ids").shape[0]);
    std::size_t seq = static_cast<std::size_t>(file.at("input_ids").shape[1]);
};

/// Token batches for a layer with vocabulary size `vocab` and hidden states for each.
struct layer_inputs {
    std::vector<std::vector<std::int64_t>> ids;
    std::vector<std::vector<float>> hidden;
    std::size_t batch = 2, seq = 12;
};

layer_inputs random_inputs(std::size_t vocab, std::size_t mh, std::size_t count) {
    layer_inputs in;
    std::mt19937_64 rng(17);
    std::normal_distribution<float> normal;
    for (std::size_t c = 0; c < count; ++c) {
        std::vector<std::int64_t> ids(in.batch * in.seq);
        for (auto& id : ids) id = static_cast<std::int64_t>(rng() % vocab);
        std::vector<float> hidden(ids.size() * mh);
        for (auto& v : hidden) v = normal(rng);
        in.ids.push_back(std::move(ids));
        in.hidden.push_back(std::move(hidden));
    }
    return in;
}

} // namespace

TEST_CASE("8 threads looking up one dense table (f32, bf16, fp8, int8) see the single-threaded rows",
          "[concurrency][storage]") {
    const fixture& f = shared_fixture();
    SECTION("f32") { check_concurrent_gathers(dense_of<float>(f), exact_rows()); }
    SECTION("bf16") {
        const auto t = dense_of<engram::bfloat16>(f);
        check_concurrent_gathers(t, brute_force(t));
    }
    SECTION("fp8 e4m3") {
        const auto t = dense_of<engram::fp8_e4m3_codec>(f);
        check_concurrent_gathers(t, brute_force(t));
    }
    SECTION("int8") {
        const auto t = dense_of<engram::int8_codec>(f);
        check_concurrent_gathers(t, brute_force(t));
    }
}

TEST_CASE("8 threads looking up mmap, pread and sharded tables see the single-threaded rows",
          "[concurrency][storage]") {
    const fixture& f = shared_fixture();
    const auto dense = dense_of<float>(f);
    SECTION("mmap") {
        const rows_file file(dense, "mmap");
        check_concurrent_gathers(engram::mmap_storage::table<float>(file.path, file.header, f.rows, f.dim),
                                 exact_rows());
    }
    SECTION("pread file table, f32 and bf16") {
        const rows_file file(dense, "pread");
        check_concurrent_gathers(engram::file_table<float>(file.path, file.header, f.rows, f.dim), exact_rows());
        const auto bf = dense_of<engram::bfloat16>(f);
        const rows_file bf_file(bf, "pread_bf16");
        check_concurrent_gathers(engram::file_table<engram::bfloat16>(bf_file.path, bf_file.header, f.rows, f.dim),
                                 brute_force(bf));
    }
    SECTION("sharded by head") {
        const auto bounds = engram::shard_bounds_by_head(f.layout, 6);
        auto t = engram::make_sharded_table(std::span<const std::size_t>(bounds), [&](std::size_t, std::size_t n) {
            return engram::dense_storage::table<float>(n, f.dim);
        });
        REQUIRE(t.num_shards() == 6);
        fill(t, f);
        check_concurrent_gathers(t, exact_rows());
    }
}

TEST_CASE("8 threads through a cached table that evicts constantly see the inner table's rows",
          "[concurrency][storage][cached]") {
    const fixture& f = shared_fixture();
    SECTION("over dense f32, room for 1/32 of the rows") {
        auto inner = std::make_shared<engram::dense_storage::table<float>>(dense_of<float>(f));
        engram::cached_table<engram::dense_storage::table<float>> cache(inner, f.rows * f.dim * sizeof(float) / 32);
        REQUIRE(cache.slots() * 16 < f.rows);
        check_concurrent_gathers(cache, exact_rows());
        CHECK(cache.misses() > 0);
        CHECK(cache.hits() > 0);
    }
    SECTION("over a pread bf16 file, a handful of slots") {
        const auto bf = dense_of<engram::bfloat16>(f);
        const rows_file file(bf, "cached");
        auto inner = std::make_shared<engram::file_table<engram::bfloat16>>(file.path, file.header, f.rows, f.dim);
        engram::cached_table<engram::file_table<engram::bfloat16>> cache(inner, 64 * f.dim * sizeof(float));
        REQUIRE(cache.slots() <= 64);
        check_concurrent_gathers(cache, brute_force(bf));
    }
}

TEST_CASE("8 threads looking up a table file's rows (engram::table_file) see the single-threaded rows",
          "[concurrency][storage][table_file]") {
    const fixture& f = shared_fixture();
    engram::layer_config cfg;
    cfg.hash.table_size_per_ngram = {500, 700};
    cfg.hash.heads_per_ngram = 3;
    cfg.hash.embed_per_ngram = 96;
    cfg.hash.layer_ids = {1};
    cfg.hidden = 16;
    cfg.branches = 2;
    static std::atomic<int> counter{0};
    const fs::path dir = fs::temp_directory_path() /
                         ("engram_concurrency_tf_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::create_directories(dir);
    struct remover {
        fs::path p;
        ~remover() {
            std::error_code ec;
            fs::remove_all(p, ec);
        }
    } cleanup{dir};
    for (const char* codec : {"f32", "int8"}) {
        CAPTURE(codec);
        const fs::path path = dir / (std::string("table_") + codec + ".safetensors");
        {
            engram::table_spec spec;
            spec.config = cfg;
            spec.codec = codec;
            spec.shards = 3;
            engram::table_file_writer w(path, spec);
            REQUIRE(w.rows() == f.rows); // the fixture's layout (primes are the same without a vocabulary)
            REQUIRE(w.dim() == f.dim);
            w.append(std::span<const float>(f.values));
            w.finish();
        }
        const auto tf = engram::table_file::open(path);
        tf.visit_rows([&](const auto& rows) {
            if (std::string(codec) == "f32") {
                check_concurrent_gathers(rows, exact_rows());
            } else {
                const auto t = dense_of<engram::int8_codec>(f);
                check_concurrent_gathers(rows, brute_force(t));
            }
        });
    }
}

TEST_CASE("hashing from 8 threads on one hasher gives the single-threaded row ids", "[concurrency][hash]") {
    engram::hash_config cfg;
    cfg.table_size_per_ngram = {5000, 7000};
    cfg.layer_ids = {1, 4};
    const auto layout = engram::make_layout(cfg, 4, 30000, 2);
    const engram::ngram_hasher<engram::multiply_xor_family, engram::orders<2, 3>> hasher(layout);
    const engram::ngram_hasher<engram::xxh3_family, engram::orders<2, 3>> hasher_xxh(layout);
    std::mt19937_64 rng(3);
    const std::size_t batch = 2, seq = 96;
    std::vector<std::vector<engram::token_id>> inputs(12);
    for (auto& in : inputs) {
        in.resize(batch * seq);
        for (auto& t : in) t = static_cast<engram::token_id>(rng() % 30000);
    }
    auto rows_of = [&](const auto& h, const std::vector<engram::token_id>& in) {
        std::vector<row_id> out(in.size() * layout.num_heads());
        h.rows(in, batch, seq, out);
        return out;
    };
    std::vector<std::vector<row_id>> serial, serial_xxh;
    for (const auto& in : inputs) {
        serial.push_back(rows_of(hasher, in));
        serial_xxh.push_back(rows_of(hasher_xxh, in));
    }
    // The ids are real row ids: inside the table, each head inside its own range.
    for (const auto& ids : serial)
        for (std::size_t i = 0; i < ids.size(); ++i) {
            const std::size_t head = i % layout.num_heads();
            REQUIRE(ids[i] >= layout.offsets[head]);
            REQUIRE(ids[i] < layout.offsets[head] + layout.primes[head]);
        }
    std::atomic<int> mismatches{0};
    on_threads(threads, [&](int k) {
        for (int rep = 0; rep < 4; ++rep)
            for (std::size_t i = 0; i < inputs.size(); ++i) {
                const std::size_t j = (i + static_cast<std::size_t>(k)) % inputs.size();
                if (rows_of(hasher, inputs[j]) != serial[j]) ++mismatches;
                if (rows_of(hasher_xxh, inputs[j]) != serial_xxh[j]) ++mismatches;
            }
    });
    CHECK(mismatches.load() == 0);
}

TEST_CASE("layer forward and decode from 8 threads on one const layer give the serial outputs",
          "[concurrency][layer]") {
    golden_case g;
    const auto layer = engram::load_layer(g.file);
    const std::size_t mh = static_cast<std::size_t>(layer.config().branches * layer.config().hidden);

    // The golden output (the PyTorch reference) from every thread, plus random batches.
    const auto in = random_inputs(layer.vocab().vocab_size(), mh, 6);
    std::vector<std::vector<float>> serial;
    for (std::size_t c = 0; c < in.ids.size(); ++c) {
        std::vector<float> out(in.hidden[c].size());
        layer.forward(in.ids[c], in.batch, in.seq, in.hidden[c], out);
        serial.push_back(std::move(out));
    }
    std::vector<float> golden(g.hidden.size());
    layer.forward(g.ids, g.batch, g.seq, g.hidden, golden);
    float worst = 0.0f;
    for (std::size_t i = 0; i < golden.size(); ++i) worst = std::max(worst, std::abs(golden[i] - g.output[i]));
    REQUIRE(worst < 1e-4f);

    std::atomic<int> mismatches{0};
    on_threads(threads, [&](int k) {
        std::vector<float> out(g.hidden.size());
        layer.forward(g.ids, g.batch, g.seq, g.hidden, out);
        if (!same_bits(out, golden)) ++mismatches;
        for (std::size_t i = 0; i < in.ids.size(); ++i) {
            const std::size_t c = (i + static_cast<std::size_t>(k)) % in.ids.size();
            std::vector<float> o(in.hidden[c].size());
            layer.forward(in.ids[c], in.batch, in.seq, in.hidden[c], o);
            if (!same_bits(o, serial[c])) ++mismatches;
        }
        // Token by token through a decode state of this thread's own: the whole-sequence output.
        const std::size_t c = static_cast<std::size_t>(k) % in.ids.size();
        std::vector<float> streamed(in.hidden[c].size());
        for (std::size_t b = 0; b < in.batch; ++b) {
            auto state = layer.new_decode_state();
            for (std::size_t t = 0; t < in.seq; ++t) {
                const std::size_t i = b * in.seq + t;
                layer.decode_step(state, in.ids[c][i], std::span<const float>(in.hidden[c]).subspan(i * mh, mh),
                                  std::span<float>(streamed).subspan(i * mh, mh));
            }
        }
        float diff = 0.0f;
        for (std::size_t i = 0; i < streamed.size(); ++i) diff = std::max(diff, std::abs(streamed[i] - serial[c][i]));
        if (!(diff < 1e-5f)) ++mismatches;
    });
    CHECK(mismatches.load() == 0);
}

TEST_CASE("prefetch racing forward: tickets in flight while other threads run the layer", "[concurrency][prefetch]") {
    golden_case g;
    const auto layer = engram::load_layer(g.file);
    const std::size_t mh = static_cast<std::size_t>(layer.config().branches * layer.config().hidden);
    const auto in = random_inputs(layer.vocab().vocab_size(), mh, 8);
    std::vector<std::vector<float>> serial;
    std::vector<engram::lookup_plan> plans;
    for (std::size_t c = 0; c < in.ids.size(); ++c) {
        std::vector<float> out(in.hidden[c].size());
        layer.forward(in.ids[c], in.batch, in.seq, in.hidden[c], out);
        serial.push_back(std::move(out));
        plans.push_back(engram::make_plan(layer, in.ids[c], in.batch, in.seq));
    }

    // The rows also behind a pread file, so that the I/O threads read while others compute.
    const rows_file file(layer.table(), "prefetch");
    const engram::file_table<float> ft(file.path, file.header, layer.table().rows(), layer.table().dim());
    engram::io_pool pool(3);
    engram::prefetcher pf_dense(layer.table(), pool, {.grains_per_thread = 4, .min_rows_per_grain = 8});
    engram::prefetcher pf_file(ft, pool);

    std::atomic<int> mismatches{0};
    on_threads(threads, [&](int k) {
        std::vector<float> out;
        for (int rep = 0; rep < 2; ++rep)
            for (std::size_t i = 0; i < in.ids.size(); ++i) {
                const std::size_t c = (i * 3 + static_cast<std::size_t>(k)) % in.ids.size();
                out.assign(in.hidden[c].size(), 0.0f);
                switch ((static_cast<std::size_t>(k) + i) % 4) {
                case 0: { // prefetch a plan, forward with it
                    const auto ticket = pf_dense.prefetch(plans[c]);
                    engram::forward(layer, ticket, plans[c], in.hidden[c], out);
                    break;
                }
                case 1: { // the pool plans (hashes) and fetches from the file
                    const auto ticket = pf_file.prefetch_tokens(layer, in.ids[c], in.batch, in.seq);
                    engram::forward(layer, ticket, in.hidden[c], out);
                    break;
                }
                case 2: { // two tickets in flight, waited in reverse order
                    const std::size_t d = (c + 1) % in.ids.size();
                    const auto first = pf_file.prefetch(plans[c]);
                    const auto second = pf_dense.prefetch_rows(plans[d].row_ids, in.batch, in.seq, plans[d].heads);
                    std::vector<float> other(in.hidden[d].size());
                    engram::forward(layer, second, in.hidden[d], other);
                    if (!same_bits(other, serial[d])) ++mismatches;
                    engram::forward(layer, first, plans[c], in.hidden[c], out);
                    break;
                }
                default: // no prefetch: the layer's own forward
                    layer.forward(in.ids[c], in.batch, in.seq, in.hidden[c], out);
                }
                if (!same_bits(out, serial[c])) ++mismatches;
            }
    });
    CHECK(mismatches.load() == 0);
}

TEST_CASE("prefetched memory and outputs do not depend on the number of I/O threads", "[concurrency][prefetch]") {
    golden_case g;
    const auto layer = engram::load_layer(g.file);
    const auto plan = engram::make_plan(layer, g.ids, g.batch, g.seq);
    std::vector<float> expected_e(plan.tokens() * layer.memory_dim());
    layer.memory(plan.row_ids, expected_e);
    std::vector<float> expected(g.hidden.size());
    layer.forward(g.ids, g.batch, g.seq, g.hidden, expected);

    for (const std::size_t n : {1, 2, 3, 8}) {
        for (const std::size_t grains : {1, 4, 32}) {
            CAPTURE(n, grains);
            engram::io_pool pool(n);
            engram::prefetcher pf(layer.table(), pool, {.grains_per_thread = grains, .min_rows_per_grain = 1});
            const auto ticket = pf.prefetch(plan);
            const auto memory = ticket.memory(plan);
            CHECK(same_bits(std::vector<float>(memory.begin(), memory.end()), expected_e));
            std::vector<float> out(g.hidden.size());
            engram::forward(layer, ticket, plan, g.hidden, out);
            CHECK(same_bits(out, expected));
        }
    }
}
