// Deterministic prefetch: plans, the I/O pool, tickets, the pread file table, and prefetch +
// forward against the layer's own forward (bit for bit), for whole batches and decode steps.
#include "support/catch.hpp"

#include <engram/layer/checkpoint.hpp>
#include <engram/prefetch.hpp>
#include <engram/storage/file.hpp>

#include <unistd.h> // for getpid, truncate

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace fs = std::filesystem;

std::string data(const char* name) { return std::string(ENGRAM_TEST_DATA_DIR) + "/" + name; }

struct golden_case {
    engram::safetensors_file file = engram::safetensors_file::open(data("forward_small.safetensors"));
    std::vector<std::int64_t> ids = file.at("input_ids").to_vector<std::int64_t>();
    std::vector<float> hidden = file.at("hidden_states").to_vector<float>();
    std::size_t batch = static_cast<std::size_t>(file.at("input_ids").shape[0]);
    std::size_t seq = static_cast<std::size_t>(file.at("input_ids").shape[1]);
};

template <class Layer>
using decode_state_of = typename std::remove_cvref_t<Layer>::decode_state;

/// A file under the temporary directory, removed on destruction.
struct temp_file {
    fs::path path;
    explicit temp_file(const std::string& stem) {
        static std::atomic<int> counter{0};
        path = fs::temp_directory_path() /
               ("engram_prefetch_" + stem + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    }
    temp_file(const temp_file&) = delete;
    temp_file& operator=(const temp_file&) = delete;
    ~temp_file() {
        std::error_code ec;
        fs::remove(path, ec);
    }
};

/// Writes `header` junk bytes, then the rows of a dense table.
template <class Table>
void write_rows(const fs::path& path, const Table& t, std::size_t header) {
    std::ofstream out(path, std::ios::binary);
    const std::string junk(header, 'x');
    out.write(junk.data(), static_cast<std::streamsize>(junk.size()));
    out.write(reinterpret_cast<const char*>(t.bytes()), static_cast<std::streamsize>(t.size_bytes()));
    REQUIRE(out.good());
}

engram::dense_storage::table<float> random_table(std::size_t rows, std::size_t dim, std::uint64_t seed) {
    engram::dense_storage::table<float> t(rows, dim);
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (auto& v : t.values()) v = u(rng);
    return t;
}

std::vector<engram::row_id> random_ids(std::size_t n, std::size_t rows, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::vector<engram::row_id> ids(n);
    for (auto& id : ids) id = static_cast<engram::row_id>(rng() % rows);
    return ids;
}

/// A table whose gather is slow and counts calls (ticket lifetime tests).
struct slow_table {
    using codec_type = engram::f32_codec;
    std::atomic<int>* started;
    std::atomic<int>* finished;
    std::chrono::milliseconds delay{30};
    [[nodiscard]] std::size_t rows() const { return 1000; }
    [[nodiscard]] std::size_t dim() const { return 4; }
    void gather(std::span<const engram::row_id> ids, std::span<float> out) const {
        ++*started;
        std::this_thread::sleep_for(delay);
        for (std::size_t i = 0; i < ids.size(); ++i)
            for (std::size_t c = 0; c < 4; ++c)
                out[i * 4 + c] = static_cast<float>(ids[i]) + 0.25f * static_cast<float>(c);
        ++*finished;
    }
};

/// A table whose gather fails for row 13.
struct failing_table {
    using codec_type = engram::f32_codec;
    [[nodiscard]] std::size_t rows() const { return 100; }
    [[nodiscard]] std::size_t dim() const { return 2; }
    void gather(std::span<const engram::row_id> ids, std::span<float> out) const {
        for (std::size_t i = 0; i < ids.size(); ++i) {
            if (ids[i] == 13) throw std::runtime_error("row 13 is unlucky");
            out[2 * i] = out[2 * i + 1] = static_cast<float>(ids[i]);
        }
    }
};

static_assert(engram::storage_table<slow_table> && engram::storage_table<failing_table>);
static_assert(engram::row_reader<engram::file_table<float>>);
static_assert(!engram::row_reader<engram::dense_storage::table<float>>);

struct production_policies : engram::layer_policies {
    using fusion_type = engram::production_fusion;
};

} // namespace

TEST_CASE("plan: unique rows and slots reproduce the row ids", "[prefetch][plan]") {
    const std::vector<engram::row_id> ids = {7, 3, 7, 9, 3, 3, 0, 12, 9, 7, 1, 0};
    const auto plan = engram::make_plan(std::span<const engram::row_id>(ids), 2, 3, 2);
    CHECK(plan.batch == 2);
    CHECK(plan.seq_len == 3);
    CHECK(plan.heads == 2);
    CHECK(plan.tokens() == 6);
    CHECK(plan.positions() == ids.size());
    CHECK(plan.row_ids == ids);
    CHECK(plan.unique_rows == std::vector<engram::row_id>{0, 1, 3, 7, 9, 12});
    REQUIRE(plan.slot.size() == ids.size());
    for (std::size_t i = 0; i < ids.size(); ++i) CHECK(plan.unique_rows[plan.slot[i]] == ids[i]);
    // The inverse index: the positions of each distinct row, ascending.
    CHECK(plan.starts == std::vector<std::size_t>{0, 2, 3, 6, 9, 11, 12});
    CHECK(plan.order == std::vector<std::size_t>{6, 11, 10, 1, 4, 5, 0, 2, 9, 3, 8, 7});

    // Random ids with many repeats.
    const auto many = random_ids(4096, 300, 5);
    const auto big = engram::make_plan(std::span<const engram::row_id>(many), 16, 16, 16);
    CHECK(std::is_sorted(big.unique_rows.begin(), big.unique_rows.end()));
    CHECK(std::adjacent_find(big.unique_rows.begin(), big.unique_rows.end()) == big.unique_rows.end());
    CHECK(big.unique_rows.size() <= 300);
    for (std::size_t i = 0; i < many.size(); ++i) REQUIRE(big.unique_rows[big.slot[i]] == many[i]);
    REQUIRE(big.starts.size() == big.unique_rows.size() + 1);
    CHECK(big.starts.back() == many.size());
    for (std::size_t u = 0; u < big.unique_rows.size(); ++u)
        for (std::size_t k = big.starts[u]; k < big.starts[u + 1]; ++k) REQUIRE(big.slot[big.order[k]] == u);

    // Beyond 2^16 positions, and with negative ids (refused later, by the fetch), the plan takes
    // its general path.
    auto wide = random_ids(70000, 5000, 6);
    wide[17] = -4;
    wide[69999] = -4;
    const auto general = engram::make_plan(wide, 70000, 1, 1);
    CHECK(general.unique_rows.front() == -4);
    CHECK(std::is_sorted(general.unique_rows.begin(), general.unique_rows.end()));
    CHECK(std::adjacent_find(general.unique_rows.begin(), general.unique_rows.end()) == general.unique_rows.end());
    for (std::size_t i = 0; i < wide.size(); ++i) REQUIRE(general.unique_rows[general.slot[i]] == wide[i]);
    for (std::size_t u = 0; u < general.unique_rows.size(); ++u)
        for (std::size_t k = general.starts[u]; k < general.starts[u + 1]; ++k)
            REQUIRE(general.slot[general.order[k]] == u);

    CHECK_THROWS_AS(engram::make_plan(std::span<const engram::row_id>(ids), 2, 3, 3), engram::input_error);
    CHECK_THROWS_AS(engram::make_plan(std::span<const engram::row_id>(ids), 12, 1, 0), engram::input_error);
    const auto empty = engram::make_plan(std::vector<engram::row_id>{}, 0, 5, 4);
    CHECK(empty.unique_rows.empty());
}

TEST_CASE("plan of a layer: its row ids are layer.rows", "[prefetch][plan]") {
    golden_case g;
    const auto layer = engram::load_layer(g.file);
    const auto plan = engram::make_plan(layer, g.ids, g.batch, g.seq);
    std::vector<engram::row_id> rows(g.ids.size() * layer.num_heads());
    layer.rows(g.ids, g.batch, g.seq, rows);
    CHECK(plan.row_ids == rows);
    CHECK(plan.heads == layer.num_heads());
    for (std::size_t i = 0; i < rows.size(); ++i) REQUIRE(plan.unique_rows[plan.slot[i]] == rows[i]);
    auto bad = g.ids;
    bad[3] = 600; // V = 600
    CHECK_THROWS_AS(engram::make_plan(layer, bad, g.batch, g.seq), engram::input_error);
}

TEST_CASE("io_pool runs every task, joins on destruction", "[prefetch][pool]") {
    CHECK_THROWS_AS(engram::io_pool(0), engram::config_error);
    std::atomic<int> ran{0};
    {
        engram::io_pool pool(3);
        CHECK(pool.size() == 3);
        for (int i = 0; i < 50; ++i)
            pool.submit([&ran] {
                std::this_thread::sleep_for(std::chrono::microseconds(200));
                ++ran;
            });
        std::vector<std::function<void()>> batch;
        for (int i = 0; i < 10; ++i) batch.emplace_back([&ran] { ++ran; });
        batch.emplace_back([] { throw std::runtime_error("escapes"); }); // swallowed, pool lives on
        pool.submit(std::move(batch));
    } // queued tasks run before the threads are joined
    CHECK(ran.load() == 60);
}

TEST_CASE("prefetch + forward equals layer.forward bit for bit: dense table", "[prefetch][forward]") {
    golden_case g;
    const auto layer = engram::load_layer(g.file);
    std::vector<float> expected(g.hidden.size()), out(g.hidden.size());
    layer.forward(g.ids, g.batch, g.seq, g.hidden, expected);

    engram::io_pool pool(4);
    engram::prefetcher pf(layer.table(), pool, {.grains_per_thread = 4, .min_rows_per_grain = 7});
    const auto plan = engram::make_plan(layer, g.ids, g.batch, g.seq);
    auto ticket = pf.prefetch(plan);
    CHECK(ticket.valid());
    engram::forward(layer, ticket, plan, g.hidden, out);
    CHECK(out == expected);
    CHECK(ticket.ready());

    // The staged rows are the table's rows; the memory vectors are layer.memory's.
    const auto staged = ticket.staged();
    REQUIRE(staged.size() == plan.unique_rows.size() * layer.table().dim());
    for (std::size_t u = 0; u < plan.unique_rows.size(); ++u)
        for (std::size_t c = 0; c < layer.table().dim(); ++c)
            REQUIRE(staged[u * layer.table().dim() + c] ==
                    layer.table().row(static_cast<std::size_t>(plan.unique_rows[u]))[c]);
    std::vector<float> e_layer(plan.tokens() * layer.memory_dim());
    layer.memory(plan.row_ids, e_layer);
    CHECK(ticket.memory(plan) == e_layer);
    std::vector<float> e2(e_layer.size());
    engram::assemble(plan, ticket, e2);
    CHECK(e2 == e_layer);

    // The memory vectors were built by the I/O threads; forward without the plan uses them as is.
    CHECK(std::equal(ticket.memory().begin(), ticket.memory().end(), e_layer.begin(), e_layer.end()));
    CHECK(ticket.plan().row_ids == plan.row_ids);
    std::fill(out.begin(), out.end(), 0.0f);
    engram::forward(layer, ticket, g.hidden, out);
    CHECK(out == expected);

    // The pool can make the plan too: from row ids, or from the tokens (hashing included).
    const auto by_rows = pf.prefetch_rows(plan.row_ids, g.batch, g.seq, layer.num_heads());
    std::fill(out.begin(), out.end(), 0.0f);
    engram::forward(layer, by_rows, g.hidden, out);
    CHECK(out == expected);
    CHECK(by_rows.plan().unique_rows == plan.unique_rows);
    const auto by_tokens = pf.prefetch_tokens(layer, g.ids, g.batch, g.seq);
    std::fill(out.begin(), out.end(), 0.0f);
    engram::forward(layer, by_tokens, plan, g.hidden, out);
    CHECK(out == expected);
    auto bad_ids = g.ids;
    bad_ids[7] = 600; // V = 600: refused by the pool's hashing, reported by wait()
    const auto bad_tokens = pf.prefetch_tokens(layer, bad_ids, g.batch, g.seq);
    CHECK_THROWS_AS(bad_tokens.wait(), engram::input_error);
    CHECK_THROWS_AS(engram::forward(layer, bad_tokens, g.hidden, out), engram::input_error);
    const auto bad_size = pf.prefetch_rows(std::vector<engram::row_id>(5, 1), g.batch, g.seq, layer.num_heads());
    CHECK_THROWS_AS(bad_size.plan(), engram::input_error);

    // A plan that is not the ticket's is refused.
    auto other_ids = g.ids;
    other_ids[0] = (other_ids[0] + 1) % 600;
    const auto other = engram::make_plan(layer, other_ids, g.batch, g.seq);
    REQUIRE(other.row_ids != plan.row_ids);
    CHECK_THROWS_AS(ticket.memory(other), engram::input_error);
    CHECK_THROWS_AS(engram::forward(layer, ticket, other, g.hidden, out), engram::input_error);
    std::vector<float> short_e(3);
    CHECK_THROWS_AS(ticket.memory(plan, short_e), engram::input_error);
}

TEST_CASE("prefetch + forward equals layer.forward bit for bit: duplicate rows", "[prefetch][forward]") {
    golden_case g;
    const auto layer = engram::load_layer(g.file);
    // Both sequences of the batch are sequence 0: every row appears (at least) twice.
    std::vector<std::int64_t> ids(g.ids.begin(), g.ids.begin() + static_cast<std::ptrdiff_t>(g.seq));
    ids.insert(ids.end(), ids.begin(), ids.end());
    std::vector<float> hidden(g.hidden);
    std::vector<float> expected(hidden.size()), out(hidden.size());
    layer.forward(ids, 2, g.seq, hidden, expected);

    const auto plan = engram::make_plan(layer, ids, 2, g.seq);
    CHECK(plan.unique_rows.size() * 2 <= plan.positions());
    engram::io_pool pool(2);
    engram::prefetcher pf(layer.table(), pool);
    const auto ticket = pf.prefetch(plan);
    engram::forward(layer, ticket, plan, hidden, out);
    CHECK(out == expected);

    // A table of the wrong shape does not fit the layer.
    const auto small = random_table(100, layer.table().dim(), 1);
    engram::prefetcher pf_small(small, pool);
    const auto plan_small = engram::make_plan(std::vector<engram::row_id>(plan.positions(), 5), 2, g.seq, plan.heads);
    const auto t_small = pf_small.prefetch(plan_small);
    CHECK_THROWS_AS(engram::forward(layer, t_small, plan_small, hidden, out), engram::config_error);
}

TEST_CASE("prefetch + forward equals layer.forward bit for bit: file tables", "[prefetch][forward][file]") {
    golden_case g;
    const auto layer = engram::load_layer(g.file);
    std::vector<float> expected(g.hidden.size()), out(g.hidden.size());
    layer.forward(g.ids, g.batch, g.seq, g.hidden, expected);
    const auto plan = engram::make_plan(layer, g.ids, g.batch, g.seq);
    engram::io_pool pool(4);

    SECTION("raw rows at an offset") {
        temp_file f("raw");
        write_rows(f.path, layer.table(), 100);
        engram::file_table<float> ft(f.path, 100, layer.table().rows(), layer.table().dim());
        CHECK(ft.rows() == layer.table().rows());
        CHECK(ft.row_bytes() == layer.table().dim() * 4);
        ft.drop_page_cache();
        for (std::size_t gap : {std::size_t{0}, std::size_t{4096}, std::size_t{1} << 20}) {
            ft.set_merge_gap(gap);
            engram::prefetcher pf(ft, pool);
            const auto ticket = pf.prefetch(plan);
            engram::forward(layer, ticket, plan, g.hidden, out);
            REQUIRE(out == expected);
        }
        // layer.forward reading the file table itself (its gather issues preads).
        layer.forward(ft, g.ids, g.batch, g.seq, g.hidden, out);
        CHECK(out == expected);
    }
    SECTION("a safetensors tensor, f32 and bf16") {
        temp_file f("st");
        {
            engram::safetensors_writer w;
            const auto values = layer.table().values();
            const std::vector<std::int64_t> shape = {static_cast<std::int64_t>(layer.table().rows()),
                                                     static_cast<std::int64_t>(layer.table().dim())};
            w.add("rows", shape, std::span<const float>(values));
            std::vector<std::uint16_t> bf(values.size());
            for (std::size_t i = 0; i < values.size(); ++i) bf[i] = engram::bfloat16::from_float(values[i]).bits;
            w.add_bf16("rows_bf16", shape, bf);
            w.add("other", {3}, std::vector<float>{1, 2, 3});
            w.write(f.path);
        }
        auto ft = engram::file_table<float>::from_safetensors(f.path, "rows");
        CHECK(ft.rows() == layer.table().rows());
        CHECK(ft.dim() == layer.table().dim());
        engram::prefetcher pf(ft, pool);
        const auto ticket = pf.prefetch(plan);
        engram::forward(layer, ticket, plan, g.hidden, out);
        CHECK(out == expected);

        // bf16 rows: the prefetch decodes exactly what the table's own gather decodes.
        auto fb = engram::file_table<engram::bfloat16>::from_safetensors(f.path, "rows_bf16");
        engram::prefetcher pfb(fb, pool);
        const auto tb = pfb.prefetch(plan);
        std::vector<float> want(plan.positions() * fb.dim());
        fb.gather(plan.row_ids, want);
        CHECK(tb.memory(plan) == want);
        std::vector<float> out_bf(g.hidden.size()), expected_bf(g.hidden.size());
        layer.forward(fb, g.ids, g.batch, g.seq, g.hidden, expected_bf);
        engram::forward(layer, tb, plan, g.hidden, out_bf);
        CHECK(out_bf == expected_bf);

        CHECK_THROWS_AS(engram::file_table<float>::from_safetensors(f.path, "missing"), engram::format_error);
        CHECK_THROWS_AS(engram::file_table<float>::from_safetensors(f.path, "rows_bf16"), engram::format_error);
        CHECK_THROWS_AS(engram::file_table<float>::from_safetensors(f.path, "other"), engram::format_error);
        CHECK_THROWS_AS(engram::file_table<float>::from_safetensors(f.path, "rows", 7), engram::format_error);
    }
}

TEST_CASE("file table: gather, read_rows merging, errors", "[prefetch][file]") {
    const auto dense = random_table(5000, 24, 11);
    temp_file f("gather");
    write_rows(f.path, dense, 8);
    engram::file_table<float> ft(f.path, 8, 5000, 24);

    // Random ids with repeats, and runs of neighbours (merged reads).
    auto ids = random_ids(700, 5000, 12);
    for (engram::row_id r = 2000; r < 2100; ++r) ids.push_back(r);
    ids.push_back(4999);
    ids.push_back(0);
    std::vector<float> want(ids.size() * 24), got(ids.size() * 24);
    dense.gather(ids, want);
    for (std::size_t gap : {std::size_t{0}, std::size_t{96}, std::size_t{4096}, std::size_t{1} << 22}) {
        ft.set_merge_gap(gap);
        std::fill(got.begin(), got.end(), -9.0f);
        ft.gather(ids, got);
        REQUIRE(got == want);
    }
    std::vector<float> row(24);
    ft.get_row(17, row);
    CHECK(std::equal(row.begin(), row.end(), dense.row(17).begin()));

    // read_rows: sorted unique ids only, exact byte count.
    std::vector<engram::row_id> sorted = {1, 2, 3, 10, 11, 4000};
    std::vector<std::byte> bytes(sorted.size() * ft.row_bytes());
    ft.read_rows(sorted, bytes);
    for (std::size_t i = 0; i < sorted.size(); ++i)
        CHECK(std::memcmp(bytes.data() + i * ft.row_bytes(),
                          dense.encoded_row(static_cast<std::size_t>(sorted[i])).data(), ft.row_bytes()) == 0);
    const std::vector<engram::row_id> unsorted = {5, 3}, repeated = {3, 3}, outside = {1, 5000};
    std::vector<std::byte> two(2 * ft.row_bytes());
    CHECK_THROWS_AS(ft.read_rows(unsorted, two), engram::input_error);
    CHECK_THROWS_AS(ft.read_rows(repeated, two), engram::input_error);
    CHECK_THROWS_AS(ft.read_rows(outside, two), engram::input_error);
    CHECK_THROWS_AS(ft.read_rows(std::span<const engram::row_id>(sorted).first(1), two), engram::input_error);
    const std::vector<engram::row_id> bad = {1, -1};
    CHECK_THROWS_AS(ft.gather(bad, std::span<float>(got).first(48)), engram::input_error);

    // Construction errors.
    CHECK_THROWS_AS(engram::file_table<float>(f.path, 8, 5001, 24), engram::format_error);
    CHECK_THROWS_AS(engram::file_table<float>(f.path.string() + ".missing", 0, 1, 24), engram::io_error);
    CHECK_THROWS_AS(engram::file_table<float>(fs::temp_directory_path(), 0, 1, 24), engram::io_error);
    CHECK_THROWS_AS(engram::file_table<float>(f.path, 0, 0, 24), engram::config_error);

    // Moving keeps the file open.
    auto moved = std::move(ft);
    CHECK(moved.rows() == 5000);
    CHECK(ft.rows() == 0);
    moved.gather(ids, got);
    CHECK(got == want);
}

TEST_CASE("decode plan: the rows decode_step would fetch; the states do not move", "[prefetch][decode]") {
    golden_case g;
    const auto layer = engram::load_layer(g.file);
    std::vector<engram::row_id> whole(g.ids.size() * layer.num_heads());
    layer.rows(g.ids, g.batch, g.seq, whole);
    const std::size_t heads = layer.num_heads(), mh = g.hidden.size() / g.ids.size();

    std::vector<decltype(layer.new_decode_state())> states;
    for (std::size_t b = 0; b < g.batch; ++b) states.push_back(layer.new_decode_state());
    engram::io_pool pool(2);
    engram::prefetcher pf(layer.table(), pool);
    std::vector<float> o(mh);
    for (std::size_t t = 0; t < g.seq; ++t) {
        std::vector<engram::token_id> next(g.batch);
        for (std::size_t b = 0; b < g.batch; ++b) next[b] = g.ids[b * g.seq + t];
        const auto plan = engram::make_decode_plan(layer, std::span<const decltype(states)::value_type>(states), next);
        REQUIRE(plan.batch == g.batch);
        REQUIRE(plan.seq_len == 1);
        for (std::size_t b = 0; b < g.batch; ++b) {
            CHECK(states[b].position() == t); // untouched
            // What the state's own push gives on a fork ...
            auto probe = states[b].ngram().fork();
            std::vector<engram::row_id> rows(heads);
            probe.push(next[b], rows);
            // ... and what the whole-sequence lookup gives at (b, t).
            for (std::size_t h = 0; h < heads; ++h) {
                REQUIRE(plan.row_ids[b * heads + h] == rows[h]);
                REQUIRE(plan.row_ids[b * heads + h] == whole[(b * g.seq + t) * heads + h]);
            }
        }
        // The pointer overload gives the same plan.
        std::vector<const decltype(states)::value_type*> ptrs;
        for (const auto& s : states) ptrs.push_back(&s);
        CHECK(
            engram::make_decode_plan(layer, std::span<const decltype(states)::value_type* const>(ptrs), next).row_ids ==
            plan.row_ids);
        // The staged memory of each sequence is what decode_step gathers.
        const auto ticket = pf.prefetch(plan);
        std::vector<float> e(plan.positions() * layer.table().dim());
        layer.memory(plan.row_ids, e);
        CHECK(ticket.memory(plan) == e);
        for (std::size_t b = 0; b < g.batch; ++b) {
            const std::size_t i = b * g.seq + t;
            layer.decode_step(states[b], next[b], std::span<const float>(g.hidden).subspan(i * mh, mh), o);
        }
    }
    std::vector<engram::token_id> bad = {5, 600};
    CHECK_THROWS_AS(engram::make_decode_plan(layer, std::span<const decltype(states)::value_type>(states), bad),
                    engram::input_error);
    std::vector<engram::token_id> one = {5};
    CHECK_THROWS_AS(engram::make_decode_plan(layer, std::span<const decltype(states)::value_type>(states), one),
                    engram::input_error);
    CHECK(states[0].position() == g.seq);
}

TEST_CASE("decode_forward on n-gram states (production fusion) matches decode_step", "[prefetch][decode]") {
    golden_case g;
    const auto layer = engram::load_layer<production_policies>(g.file);
    const std::size_t mh = g.hidden.size() / g.ids.size();
    temp_file f("decode");
    write_rows(f.path, layer.table(), 0);
    engram::file_table<float> ft(f.path, 0, layer.table().rows(), layer.table().dim());
    engram::io_pool pool(3);
    engram::prefetcher pf(ft, pool);

    using ngram_state = std::remove_cvref_t<decltype(layer.new_decode_state().ngram())>;
    std::vector<ngram_state> ngrams;
    std::vector<decltype(layer.new_decode_state())> reference;
    for (std::size_t b = 0; b < g.batch; ++b) {
        ngrams.push_back(layer.new_decode_state().ngram());
        reference.push_back(layer.new_decode_state());
    }
    // Step t's fetch starts before step t-1's layer runs (tokens are known one step ahead).
    auto next_of = [&](std::size_t t) {
        std::vector<engram::token_id> next(g.batch);
        for (std::size_t b = 0; b < g.batch; ++b) next[b] = g.ids[b * g.seq + t];
        return next;
    };
    auto next = next_of(0);
    auto plan = engram::make_decode_plan(ngrams, next);
    auto ticket = pf.prefetch(plan);
    double worst = 0, scale = 0;
    for (std::size_t t = 0; t < g.seq; ++t) {
        std::vector<float> hidden(g.batch * mh), out(g.batch * mh), want(mh);
        for (std::size_t b = 0; b < g.batch; ++b)
            std::copy_n(g.hidden.begin() + static_cast<std::ptrdiff_t>((b * g.seq + t) * mh), mh,
                        hidden.begin() + static_cast<std::ptrdiff_t>(b * mh));
        // Exact against forward_memory on the gathered rows.
        std::vector<float> e(plan.positions() * layer.table().dim()), exact(out.size());
        layer.memory(plan.row_ids, e);
        layer.forward_memory(e, g.batch, 1, hidden, exact);

        engram::decode_forward(layer, ticket, plan, std::span<ngram_state>(ngrams), next, hidden, out);
        CHECK(out == exact);
        for (std::size_t b = 0; b < g.batch; ++b) {
            REQUIRE(ngrams[b].position() == t + 1);
            layer.decode_step(reference[b], next[b], std::span<const float>(hidden).subspan(b * mh, mh), want);
            for (std::size_t c = 0; c < mh; ++c) {
                worst = std::max(worst, static_cast<double>(std::fabs(out[b * mh + c] - want[c])));
                scale = std::max(scale, static_cast<double>(std::fabs(want[c])));
            }
        }
        if (t + 1 < g.seq) {
            next = next_of(t + 1);
            plan = engram::make_decode_plan(ngrams, next);
            ticket = pf.prefetch(plan);
        }
    }
    // One GEMM over the batch against single-token products: equal up to float rounding.
    INFO("max |decode_forward - decode_step| = " << worst << " (output scale " << scale << ")");
    CHECK(worst <= 1e-6 * scale);

    // A plan for other states is refused, and nothing moves.
    auto stale_next = next_of(0);
    const auto stale = engram::make_decode_plan(ngrams, stale_next);
    const auto t2 = pf.prefetch(stale);
    std::vector<engram::row_id> scratch(layer.num_heads());
    ngrams[0].push(5, scratch);
    std::vector<float> hidden(g.batch * mh), out(g.batch * mh);
    CHECK_THROWS_AS(engram::decode_forward(layer, t2, stale, std::span<ngram_state>(ngrams), stale_next, hidden, out),
                    engram::input_error);
    CHECK(ngrams[1].position() == g.seq);
}

TEST_CASE("destroying or replacing an unwaited ticket waits for its workers", "[prefetch][ticket]") {
    std::atomic<int> started{0}, finished{0};
    slow_table table{&started, &finished};
    engram::io_pool pool(4);
    engram::prefetcher pf(table, pool, {.grains_per_thread = 2, .min_rows_per_grain = 1});
    const auto plan = engram::make_plan(random_ids(64, 1000, 3), 4, 4, 4);
    {
        auto ticket = pf.prefetch(plan);
        CHECK(ticket.valid());
    } // waits here
    // 4 threads x 2 grains per thread: grains of ceil(U / 8) rows, one gather each.
    const std::size_t u = plan.unique_rows.size(), grain = (u + 7) / 8;
    CHECK(started.load() == finished.load());
    CHECK(static_cast<std::size_t>(finished.load()) == (u + grain - 1) / grain);

    auto a = pf.prefetch(plan);
    a = pf.prefetch(plan); // the first fetch is settled before it is dropped
    auto b = std::move(a);
    CHECK_FALSE(a.valid());
    CHECK_THROWS_AS(a.wait(), engram::input_error);
    b.wait();
    CHECK(b.ready());
    CHECK(started.load() == finished.load());
    const auto staged = b.staged();
    for (std::size_t u = 0; u < plan.unique_rows.size(); ++u)
        CHECK(staged[u * 4 + 1] == static_cast<float>(plan.unique_rows[u]) + 0.25f);

    // An empty plan gives a ticket that is ready at once.
    const auto none = pf.prefetch(engram::make_plan(std::vector<engram::row_id>{}, 0, 1, 4));
    CHECK(none.ready());
    CHECK(none.staged().empty());
}

TEST_CASE("a failing fetch surfaces from wait()", "[prefetch][errors]") {
    engram::io_pool pool(2);
    const auto dense = random_table(300, 8, 4);
    auto ids = random_ids(64, 300, 9);

    SECTION("row id out of range, dense table") {
        ids[10] = 300;
        engram::prefetcher pf(dense, pool);
        const auto ticket = pf.prefetch(engram::make_plan(ids, 64, 1, 1)); // prefetch itself does not throw
        CHECK_THROWS_AS(ticket.wait(), engram::input_error);
        CHECK_THROWS_AS(ticket.wait(), engram::input_error); // again
        CHECK(ticket.ready());
    }
    SECTION("row id out of range, file table") {
        temp_file f("range");
        write_rows(f.path, dense, 0);
        engram::file_table<float> ft(f.path, 0, 300, 8);
        ids[3] = -2;
        engram::prefetcher pf(ft, pool);
        const auto plan = engram::make_plan(ids, 8, 8, 1);
        const auto ticket = pf.prefetch(plan);
        CHECK_THROWS_AS(ticket.wait(), engram::input_error);
        CHECK_THROWS_AS(ticket.memory(plan), engram::input_error);
    }
    SECTION("file truncated after the table was opened") {
        temp_file f("trunc");
        write_rows(f.path, dense, 0);
        engram::file_table<float> ft(f.path, 0, 300, 8);
        REQUIRE(::truncate(f.path.c_str(), 100 * 8 * 4) == 0);
        ids[0] = 299; // beyond the new end
        engram::prefetcher pf(ft, pool);
        const auto ticket = pf.prefetch(engram::make_plan(ids, 64, 1, 1));
        CHECK_THROWS_AS(ticket.wait(), engram::format_error);
    }
    SECTION("a table's own exception type passes through") {
        failing_table table;
        engram::prefetcher pf(table, pool, {.grains_per_thread = 4, .min_rows_per_grain = 4});
        std::vector<engram::row_id> rows(40);
        for (std::size_t i = 0; i < rows.size(); ++i) rows[i] = static_cast<engram::row_id>(i);
        const auto ticket = pf.prefetch(engram::make_plan(rows, 40, 1, 1));
        CHECK_THROWS_AS(ticket.wait(), std::runtime_error);
        rows[13] = 50;
        CHECK_NOTHROW(pf.prefetch(engram::make_plan(rows, 40, 1, 1)).wait());
    }
}

TEST_CASE("many prefetches in flight on 4 threads give the serial results", "[prefetch][concurrency]") {
    const auto dense = random_table(20000, 16, 21);
    temp_file f("many");
    write_rows(f.path, dense, 64);
    engram::file_table<float> ft(f.path, 64, 20000, 16);
    engram::io_pool pool(4);
    engram::prefetcher pf_dense(dense, pool, {.grains_per_thread = 4, .min_rows_per_grain = 16});
    engram::prefetcher pf_file(ft, pool);

    constexpr std::size_t steps = 24;
    std::vector<engram::lookup_plan> plans;
    std::vector<std::vector<float>> serial;
    for (std::size_t s = 0; s < steps; ++s) {
        plans.push_back(engram::make_plan(random_ids(8 * 16 * (1 + s % 5), 20000, 100 + s), 1 + s % 5, 8, 16));
        std::vector<float> e(plans.back().positions() * 16);
        dense.gather(plans.back().row_ids, e);
        serial.push_back(std::move(e));
    }
    // Everything in flight at once, waited in reverse order (odd steps from the file).
    std::vector<engram::prefetch_ticket> tickets;
    for (std::size_t s = 0; s < steps; ++s)
        tickets.push_back(s % 2 ? pf_file.prefetch(plans[s]) : pf_dense.prefetch(plans[s]));
    for (std::size_t s = steps; s-- > 0;) REQUIRE(tickets[s].memory(plans[s]) == serial[s]);

    // Plans made by the pool, everything in flight, the pool destroyed before anyone waits: its
    // destructor runs the queued work (including the fetches the planning tasks queue) first.
    std::vector<engram::prefetch_ticket> drained;
    {
        engram::io_pool small_pool(2);
        engram::prefetcher pf2(ft, small_pool);
        for (std::size_t s = 0; s < steps; ++s)
            drained.push_back(pf2.prefetch_rows(plans[s].row_ids, plans[s].batch, plans[s].seq_len, plans[s].heads));
    }
    for (std::size_t s = 0; s < steps; ++s) {
        REQUIRE(drained[s].ready());
        REQUIRE(drained[s].memory(plans[s]) == serial[s]);
    }

    // Several threads issuing prefetches through one prefetcher.
    std::vector<std::thread> clients;
    std::atomic<int> mismatches{0};
    for (int c = 0; c < 3; ++c)
        clients.emplace_back([&, c] {
            for (std::size_t s = static_cast<std::size_t>(c); s < steps; s += 3) {
                const auto t = pf_file.prefetch(plans[s]);
                const auto r = pf_dense.prefetch_rows(plans[s].row_ids, plans[s].batch, 8, 16);
                if (t.memory(plans[s]) != serial[s] || r.memory(plans[s]) != serial[s]) ++mismatches;
            }
        });
    for (auto& c : clients) c.join();
    CHECK(mismatches.load() == 0);
}

TEST_CASE("decode_forward on layer decode states (reference fusion, conv history) matches decode_step",
          "[prefetch][decode]") {
    golden_case g;
    const auto layer = engram::load_layer(g.file); // reference fusion: the conv history is in decode_state
    const std::size_t width = 4 * 64;
    engram::io_pool pool(2);
    engram::prefetcher pf(layer.table(), pool);

    // Both sequences step together: one plan and one fetch per step for the two of them.
    std::vector<decode_state_of<decltype(layer)>> prefetched, plain;
    for (std::size_t b = 0; b < g.batch; ++b) {
        prefetched.push_back(layer.new_decode_state());
        plain.push_back(layer.new_decode_state());
    }
    std::vector<float> hidden(g.batch * width), out(g.batch * width), expected(width);
    for (std::size_t t = 0; t < g.seq; ++t) {
        std::vector<engram::token_id> next(g.batch);
        for (std::size_t b = 0; b < g.batch; ++b) {
            next[b] = g.ids[b * g.seq + t];
            std::copy_n(g.hidden.begin() + static_cast<std::ptrdiff_t>((b * g.seq + t) * width), width,
                        hidden.begin() + static_cast<std::ptrdiff_t>(b * width));
        }
        const auto plan = engram::make_decode_plan(layer, std::span<const decode_state_of<decltype(layer)>>(prefetched),
                                                   std::span<const engram::token_id>(next));
        const auto ticket = pf.prefetch(plan);
        engram::decode_forward(layer, ticket, plan, std::span(prefetched), std::span<const engram::token_id>(next),
                               hidden, out);
        for (std::size_t b = 0; b < g.batch; ++b) {
            layer.decode_step(plain[b], next[b], std::span<const float>(hidden).subspan(b * width, width), expected);
            REQUIRE(std::equal(expected.begin(), expected.end(), out.begin() + static_cast<std::ptrdiff_t>(b * width)));
        }
    }
    // A plan made for other tokens is refused, and that state does not move.
    std::vector<engram::token_id> next = {5, 6};
    const auto plan = engram::make_decode_plan(layer, std::span<const decode_state_of<decltype(layer)>>(prefetched),
                                               std::span<const engram::token_id>(next));
    const auto ticket = pf.prefetch(plan);
    const std::vector<engram::token_id> other = {7, 6};
    const auto before = prefetched[0].position();
    CHECK_THROWS_AS(engram::decode_forward(layer, ticket, plan, std::span(prefetched),
                                           std::span<const engram::token_id>(other), hidden, out),
                    engram::input_error);
    CHECK(prefetched[0].position() == before);
}
