// Every storage table gathers what a dense table of the same rows gathers: dense, sharded (by row
// range, by head, over tables without direct row access, the policy), cached (over dense, over
// sharded, the policy), for float and bf16 rows; FP8 rows with their scales in a second tensor
// (DeepSeek-V4.1's checkpoint layout, served in place: alone, sharded by row range, cached);
// errors, and concurrent readers.
#include "support/catch.hpp"

#include <engram/engram.hpp>
#include <engram/storage/cached.hpp>
#include <engram/storage/file.hpp>
#include <engram/storage/fp8_tensor.hpp>
#include <engram/storage/mmap.hpp>
#include <engram/storage/sharded.hpp>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <random>
#include <thread>
#include <tuple>
#include <type_traits>
#include <vector>

#include <unistd.h> // for getpid

namespace {

using engram::bfloat16;
using engram::row_id;

template <class Row>
using dense_t = engram::dense_storage::table<Row>;

/// The shared content: a small layer layout (2 orders x 3 heads, about 4,900 rows) and random
/// row values; every table under test holds these rows.
struct fixture {
    engram::layer_layout layout;
    std::size_t rows = 0;
    std::size_t dim = 32; // a multiple of 32: FP8 rows have one scale per 32 values
    std::vector<float> values;

    std::span<const float> row(std::size_t r) const { return {values.data() + r * dim, dim}; }
};

const fixture& shared_fixture() {
    static const fixture f = [] {
        engram::hash_config cfg;
        cfg.table_size_per_ngram = {800, 800};
        cfg.heads_per_ngram = 3;
        cfg.embed_per_ngram = 96; // d = 32
        cfg.layer_ids = {1};
        fixture out;
        out.layout = engram::make_layout(cfg, 1, 1000, 2);
        out.rows = static_cast<std::size_t>(out.layout.total_rows);
        out.values.resize(out.rows * out.dim);
        std::mt19937 rng(11);
        std::normal_distribution<float> dist;
        for (auto& v : out.values) v = dist(rng);
        return out;
    }();
    return f;
}

template <class Table>
void fill(Table& t, const fixture& f) {
    for (std::size_t r = 0; r < f.rows; ++r) t.set_row(r, f.row(r));
}

/// A table that hides its inner table's direct row access, so that the sharded table takes
/// its grouping path (counting pass, one inner gather per shard, scatter).
template <class T>
class opaque {
public:
    using codec_type = typename T::codec_type;
    explicit opaque(T t) : t_(std::move(t)) {}
    [[nodiscard]] std::size_t rows() const noexcept { return t_.rows(); }
    [[nodiscard]] std::size_t dim() const noexcept { return t_.dim(); }
    void gather(std::span<const row_id> ids, std::span<float> out) const { t_.gather(ids, out); }
    void set_row(std::size_t i, std::span<const float> v) { t_.set_row(i, v); }

private:
    T t_;
};

// Factories: `make(f)` builds a table holding f's rows.
template <class Row>
struct dense_case {
    using row = Row;
    static dense_t<Row> make(const fixture& f) {
        dense_t<Row> t(f.rows, f.dim);
        fill(t, f);
        return t;
    }
};

template <class Row>
struct sharded_rows_case {
    using row = Row;
    static auto make(const fixture& f) {
        const auto bounds = engram::shard_bounds_by_rows(f.rows, 3);
        auto t = engram::make_sharded_table(std::span<const std::size_t>(bounds),
                                            [&](std::size_t, std::size_t n) { return dense_t<Row>(n, f.dim); });
        STATIC_REQUIRE(decltype(t)::direct);
        REQUIRE(t.num_shards() == 3);
        fill(t, f);
        return t;
    }
};

template <class Row>
struct sharded_head_case {
    using row = Row;
    static auto make(const fixture& f) {
        const auto bounds = engram::shard_bounds_by_head(f.layout, 4);
        auto t = engram::make_sharded_table(std::span<const std::size_t>(bounds),
                                            [&](std::size_t, std::size_t n) { return dense_t<Row>(n, f.dim); });
        REQUIRE(t.num_shards() == 4);
        for (std::size_t k = 0; k < t.num_shards(); ++k) // every shard starts at a head
            CHECK(std::find(f.layout.offsets.begin(), f.layout.offsets.end(),
                            static_cast<std::int64_t>(t.first_row(k))) != f.layout.offsets.end());
        fill(t, f);
        return t;
    }
};

template <class Row>
struct sharded_grouped_case {
    using row = Row;
    static auto make(const fixture& f) {
        const auto bounds = engram::shard_bounds_by_rows(f.rows, 5);
        auto t = engram::make_sharded_table(std::span<const std::size_t>(bounds), [&](std::size_t, std::size_t n) {
            return opaque<dense_t<Row>>(dense_t<Row>(n, f.dim));
        });
        STATIC_REQUIRE_FALSE(decltype(t)::direct);
        fill(t, f);
        return t;
    }
};

template <class Row>
struct sharded_policy_case {
    using row = Row;
    static auto make(const fixture& f) {
        STATIC_REQUIRE(engram::storage_policy<engram::sharded_storage<engram::dense_storage, 4>, Row>);
        engram::sharded_storage<engram::dense_storage, 4>::table<Row> t(f.rows, f.dim);
        REQUIRE(t.num_shards() == 4);
        REQUIRE(t.shard(3).rows() + t.first_row(3) == f.rows);
        fill(t, f);
        return t;
    }
};

/// A quarter of the decoded table: the random batches evict.
std::size_t small_capacity(const fixture& f) { return f.rows * f.dim * sizeof(float) / 4; }

template <class Row>
struct cached_dense_case {
    using row = Row;
    static auto make(const fixture& f) {
        auto inner = std::make_shared<dense_t<Row>>(f.rows, f.dim);
        fill(*inner, f);
        engram::cached_table<dense_t<Row>> t(std::move(inner), small_capacity(f));
        REQUIRE(t.slots() < f.rows);
        return t;
    }
};

template <class Row>
struct cached_sharded_case {
    using row = Row;
    using inner_t = engram::sharded_storage<engram::dense_storage, 3>::table<Row>;
    static auto make(const fixture& f) {
        auto inner = std::make_shared<inner_t>(f.rows, f.dim);
        fill(*inner, f);
        engram::cached_table<inner_t> t(std::move(inner), small_capacity(f));
        REQUIRE(t.slots() < f.rows);
        return t;
    }
};

template <class Row>
struct cached_policy_case {
    using row = Row;
    static auto make(const fixture& f) {
        STATIC_REQUIRE(engram::storage_policy<engram::cached_storage<engram::dense_storage>, Row>);
        engram::cached_storage<engram::dense_storage, std::size_t{64} << 10>::table<Row> t(f.rows, f.dim);
        fill(t, f);
        REQUIRE(t.slots() < f.rows);
        return t;
    }
};

/// Writes f's rows, encoded as `Row`, after a 100-byte header to a fresh file; returns its path.
/// The tables below open it, then the file is unlinked: the open mapping / descriptor keeps it.
template <class Row>
std::filesystem::path write_rows_file(const fixture& f, const char* stem) {
    dense_t<Row> t(f.rows, f.dim);
    fill(t, f);
    static int counter = 0;
    const auto path =
        std::filesystem::temp_directory_path() / (std::string("engram_conformance_") + stem + "_" +
                                                  std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::ofstream out(path, std::ios::binary);
    const std::string header(100, 'h');
    out.write(header.data(), static_cast<std::streamsize>(header.size()));
    out.write(reinterpret_cast<const char*>(t.bytes()), static_cast<std::streamsize>(t.size_bytes()));
    return path;
}

template <class Row>
struct mmap_case {
    using row = Row;
    static auto make(const fixture& f) {
        const auto path = write_rows_file<Row>(f, "mmap");
        engram::mmap_storage::table<Row> t(path, 100, f.rows, f.dim);
        std::filesystem::remove(path);
        return t;
    }
};

template <class Row>
struct file_case {
    using row = Row;
    static auto make(const fixture& f) {
        const auto path = write_rows_file<Row>(f, "file");
        engram::file_table<Row> t(path, 100, f.rows, f.dim);
        std::filesystem::remove(path);
        return t;
    }
};

/// f's rows encoded as FP8 and written as DeepSeek-V4.1 writes them: the codes in one tensor
/// (F8_E4M3 [rows, dim]), the scales in another (F8_E8M0 [rows, dim / 32]); the table opens the
/// file in place (then the file is unlinked: the mapping keeps it).
engram::fp8_tensor_table fp8_tensor_file(const fixture& f) {
    dense_t<engram::fp8_e4m3_codec> t(f.rows, f.dim);
    fill(t, f);
    std::vector<std::byte> codes(f.rows * f.dim), scales(f.rows * f.dim / 32);
    for (std::size_t r = 0; r < f.rows; ++r) {
        const auto row = t.encoded_row(r);
        std::copy_n(row.begin(), f.dim, codes.begin() + static_cast<std::ptrdiff_t>(r * f.dim));
        std::copy_n(row.begin() + static_cast<std::ptrdiff_t>(f.dim), f.dim / 32,
                    scales.begin() + static_cast<std::ptrdiff_t>(r * f.dim / 32));
    }
    engram::safetensors_writer w;
    const auto rows = static_cast<std::int64_t>(f.rows), dim = static_cast<std::int64_t>(f.dim);
    w.add("embed.weight", engram::dtype::f8_e4m3, {rows, dim}, codes);
    w.add("embed.scale", engram::dtype::f8_e8m0, {rows, dim / 32}, scales);
    static int counter = 0;
    const auto path = std::filesystem::temp_directory_path() /
                      ("engram_conformance_fp8_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    w.write(path);
    auto table = engram::fp8_tensor_table::open(path, "embed.weight", "embed.scale");
    std::filesystem::remove(path);
    return table;
}

struct fp8_tensor_case {
    using row = engram::fp8_e4m3_codec;
    static auto make(const fixture& f) { return fp8_tensor_file(f); }
};

struct fp8_tensor_sharded_case {
    using row = engram::fp8_e4m3_codec;
    static auto make(const fixture& f) {
        const auto whole = fp8_tensor_file(f);
        const auto bounds = engram::shard_bounds_by_rows(f.rows, 3);
        return engram::make_sharded_table(std::span<const std::size_t>(bounds),
                                          [&](std::size_t first, std::size_t n) { return whole.slice(first, n); });
    }
};

struct fp8_tensor_cached_case {
    using row = engram::fp8_e4m3_codec;
    static auto make(const fixture& f) {
        engram::cached_table<engram::fp8_tensor_table> t(std::make_shared<engram::fp8_tensor_table>(fp8_tensor_file(f)),
                                                         small_capacity(f));
        REQUIRE(t.slots() < f.rows);
        return t;
    }
};

using all_cases = std::tuple<dense_case<float>, dense_case<bfloat16>, sharded_rows_case<float>,
                             sharded_rows_case<bfloat16>, sharded_head_case<float>, sharded_head_case<bfloat16>,
                             sharded_grouped_case<float>, sharded_grouped_case<bfloat16>, sharded_policy_case<float>,
                             sharded_policy_case<bfloat16>, cached_dense_case<float>, cached_dense_case<bfloat16>,
                             cached_sharded_case<float>, cached_sharded_case<bfloat16>, cached_policy_case<float>,
                             cached_policy_case<bfloat16>, mmap_case<float>, mmap_case<bfloat16>, file_case<float>,
                             file_case<bfloat16>, fp8_tensor_case, fp8_tensor_sharded_case, fp8_tensor_cached_case>;

template <class T>
concept counting = requires(const T& t) {
    t.hits();
    t.misses();
    t.reset_counters();
};

/// `n` ids: half from a pool of 64 hot rows (duplicates and cache hits), half uniform.
std::vector<row_id> random_batch(std::mt19937_64& rng, std::size_t n, std::size_t rows) {
    std::vector<row_id> ids(n);
    for (auto& id : ids) {
        const std::uint64_t x = rng();
        id = static_cast<row_id>((x & 1) != 0 ? (x >> 1) % 64 * 37 % rows : (x >> 1) % rows);
    }
    return ids;
}

template <class Table>
std::vector<float> gathered(const Table& t, const std::vector<row_id>& ids) {
    std::vector<float> out(ids.size() * t.dim(), -7.0f);
    t.gather(std::span<const row_id>(ids), std::span<float>(out));
    return out;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

} // namespace

TEMPLATE_LIST_TEST_CASE("storage conformance: every policy gathers what dense gathers", "[storage][conformance]",
                        all_cases) {
    using row = typename TestType::row;
    const fixture& f = shared_fixture();
    const auto ref = dense_case<row>::make(f);
    const auto table = TestType::make(f);
    using table_t = std::remove_cvref_t<decltype(table)>;
    STATIC_REQUIRE(engram::storage_table<table_t>);
    STATIC_REQUIRE(std::is_same_v<typename table_t::codec_type, engram::codec_of_t<row>>);
    REQUIRE(table.rows() == f.rows);
    REQUIRE(table.dim() == f.dim);
    std::uint64_t lookups = 0;
    if constexpr (counting<table_t>) table.reset_counters();

    SECTION("random batches with duplicates, every row in order, empty batches") {
        std::mt19937_64 rng(17);
        for (std::size_t n : {0, 1, 2, 9, 100, 1000, 5000, 1, 64, 3000}) {
            const auto ids = random_batch(rng, n, f.rows);
            REQUIRE(same_bits(gathered(table, ids), gathered(ref, ids)));
            lookups += n;
        }
        std::vector<row_id> all(f.rows);
        for (std::size_t r = 0; r < f.rows; ++r) all[r] = static_cast<row_id>(r);
        for (int pass = 0; pass < 2; ++pass) {
            REQUIRE(same_bits(gathered(table, all), gathered(ref, all)));
            lookups += all.size();
        }
        if constexpr (counting<table_t>) {
            CHECK(table.hits() + table.misses() == lookups);
            CHECK(table.hits() > 0);
            // The cache holds a quarter of the rows: the second sweep over every row misses.
            CHECK(table.misses() > f.rows);
        }
    }

    SECTION("an id outside [0, rows) throws input_error and nothing is written") {
        std::mt19937_64 rng(5);
        const std::vector<row_id> bad = {static_cast<row_id>(f.rows), -1, std::numeric_limits<row_id>::max(),
                                         std::numeric_limits<row_id>::min()};
        for (row_id b : bad)
            for (std::size_t at : {std::size_t{0}, std::size_t{5}, std::size_t{9}}) {
                auto ids = random_batch(rng, 10, f.rows);
                ids[at] = b;
                std::vector<float> out(ids.size() * f.dim, 12345.0f);
                CHECK_THROWS_AS(table.gather(std::span<const row_id>(ids), std::span<float>(out)), engram::input_error);
                CHECK(std::all_of(out.begin(), out.end(), [](float v) { return v == 12345.0f; }));
            }
        if constexpr (counting<table_t>) CHECK(table.hits() + table.misses() == 0);
    }

    SECTION("a wrong output size throws input_error and nothing is written") {
        const std::vector<row_id> ids = {3, 1, 4, 1, 5};
        for (std::size_t size : {std::size_t{0}, ids.size() * f.dim - 1, ids.size() * f.dim + 1, f.dim}) {
            std::vector<float> out(size, 12345.0f);
            CHECK_THROWS_AS(table.gather(std::span<const row_id>(ids), std::span<float>(out)), engram::input_error);
            CHECK(std::all_of(out.begin(), out.end(), [](float v) { return v == 12345.0f; }));
        }
        std::vector<float> one(1, 12345.0f);
        CHECK_THROWS_AS(table.gather(std::span<const row_id>(), std::span<float>(one)), engram::input_error);
        CHECK(one[0] == 12345.0f);
        if constexpr (counting<table_t>) CHECK(table.hits() + table.misses() == 0);
    }

    SECTION("4 threads gathering at once see dense's rows; counters add up") {
        constexpr int threads = 4, batches = 60;
        constexpr std::size_t batch = 256;
        std::atomic<int> mismatches{0};
        std::vector<std::thread> pool;
        for (int t = 0; t < threads; ++t)
            pool.emplace_back([&, t] {
                std::mt19937_64 rng(100 + static_cast<std::uint64_t>(t));
                for (int b = 0; b < batches; ++b) {
                    const auto ids = random_batch(rng, batch, f.rows);
                    if (!same_bits(gathered(table, ids), gathered(ref, ids))) mismatches.fetch_add(1);
                    if constexpr (counting<table_t>) {
                        // Cache maintenance from one thread while the others read.
                        if (t == 0 && b % 20 == 19) table.clear();
                        if (t == 1) table.invalidate(ids[0]);
                    }
                }
            });
        for (auto& th : pool) th.join();
        CHECK(mismatches.load() == 0);
        if constexpr (counting<table_t>) {
            CHECK(table.hits() + table.misses() == std::uint64_t{threads} * batches * batch);
            CHECK(table.hit_rate() > 0.0);
            CHECK(table.hit_rate() < 1.0);
        }
    }
}

TEST_CASE("sharded table: shards must cover [0, rows) without gaps or overlaps, one dim", "[storage][sharded]") {
    using shard = engram::sharded_table<dense_t<float>>::shard_spec;
    auto make = [](std::vector<std::pair<std::size_t, std::pair<std::size_t, std::size_t>>> spec) {
        std::vector<shard> shards;
        for (const auto& [first, shape] : spec)
            shards.push_back(shard{first, dense_t<float>(shape.first, shape.second)});
        return engram::sharded_table<dense_t<float>>(std::move(shards));
    };
    CHECK_THROWS_AS(make({}), engram::config_error);
    CHECK_THROWS_AS(make({{1, {10, 4}}}), engram::config_error);               // does not start at 0
    CHECK_THROWS_AS(make({{0, {10, 4}}, {11, {5, 4}}}), engram::config_error); // gap
    CHECK_THROWS_AS(make({{0, {10, 4}}, {9, {5, 4}}}), engram::config_error);  // overlap
    CHECK_THROWS_AS(make({{0, {10, 4}}, {0, {10, 4}}}), engram::config_error); // same range twice
    CHECK_THROWS_AS(make({{0, {10, 4}}, {10, {5, 8}}}), engram::config_error); // dims differ
    // Shards in any order are sorted by first row.
    auto t = make({{15, {5, 4}}, {0, {10, 4}}, {10, {5, 4}}});
    REQUIRE(t.rows() == 20);
    REQUIRE(t.num_shards() == 3);
    CHECK(t.first_row(1) == 10);
    CHECK(t.shard(2).rows() == 5);
    CHECK(t.shard_of(0) == 0);
    CHECK(t.shard_of(14) == 1);
    CHECK(t.shard_of(19) == 2);
    for (std::size_t r = 0; r < 20; ++r) t.set_row(r, std::vector<float>(4, static_cast<float>(r)));
    std::vector<float> out(4);
    t.get_row(17, out);
    CHECK(out[3] == 17.0f);
    CHECK(t.shard(2).row(2)[0] == 17.0f);
    CHECK_THROWS_AS(t.set_row(20, out), engram::input_error);
    CHECK_THROWS_AS(t.get_row(3, std::span<float>(out.data(), 3)), engram::input_error);
    // Moving and default construction.
    auto moved = std::move(t);
    CHECK(moved.rows() == 20);
    engram::sharded_table<dense_t<float>> none;
    CHECK(none.rows() == 0);
    CHECK_NOTHROW(none.gather({}, {}));
    // Bounds that do not increase.
    const std::vector<std::size_t> bad = {0, 5, 5, 9};
    CHECK_THROWS_AS(engram::make_sharded_table(std::span<const std::size_t>(bad),
                                               [](std::size_t, std::size_t n) { return dense_t<float>(n, 4); }),
                    engram::config_error);
    CHECK_THROWS_AS((engram::sharded_storage<engram::dense_storage, 4>::table<float>(3, 4)), engram::config_error);
}

TEST_CASE("sharded table: more shards than binary-search threshold", "[storage][sharded]") {
    const std::size_t rows = 1000, dim = 4;
    const auto bounds = engram::shard_bounds_by_rows(rows, 13);
    auto t = engram::make_sharded_table(std::span<const std::size_t>(bounds),
                                        [&](std::size_t, std::size_t n) { return dense_t<float>(n, dim); });
    for (std::size_t r = 0; r < rows; ++r) {
        REQUIRE(t.first_row(t.shard_of(r)) <= r);
        REQUIRE(r < t.first_row(t.shard_of(r) + 1));
        t.set_row(r, std::vector<float>(dim, static_cast<float>(r)));
    }
    std::vector<row_id> ids = {999, 0, 500, 77, 77, 998, 1};
    std::vector<float> out(ids.size() * dim);
    t.gather(ids, out);
    for (std::size_t i = 0; i < ids.size(); ++i) CHECK(out[i * dim + 1] == static_cast<float>(ids[i]));
}

TEST_CASE("shard bounds by row range and by head", "[storage][sharded]") {
    CHECK(engram::shard_bounds_by_rows(10, 3) == std::vector<std::size_t>{0, 4, 7, 10});
    CHECK(engram::shard_bounds_by_rows(10, 1) == std::vector<std::size_t>{0, 10});
    CHECK(engram::shard_bounds_by_rows(3, 3) == std::vector<std::size_t>{0, 1, 2, 3});
    CHECK_THROWS_AS(engram::shard_bounds_by_rows(2, 3), engram::config_error);
    CHECK_THROWS_AS(engram::shard_bounds_by_rows(2, 0), engram::config_error);

    const auto& layout = shared_fixture().layout; // 6 heads
    const auto total = static_cast<std::size_t>(layout.total_rows);
    CHECK(engram::shard_bounds_by_head(layout, 1) == std::vector<std::size_t>{0, total});
    std::vector<std::size_t> per_head(layout.offsets.begin(), layout.offsets.end());
    per_head.push_back(total);
    CHECK(engram::shard_bounds_by_head(layout, 6) == per_head);
    const auto three = engram::shard_bounds_by_head(layout, 3); // heads of about equal size: 2 each
    CHECK(three == std::vector<std::size_t>{0, per_head[2], per_head[4], total});
    CHECK_THROWS_AS(engram::shard_bounds_by_head(layout, 7), engram::config_error);
    CHECK_THROWS_AS(engram::shard_bounds_by_head(layout, 0), engram::config_error);
    auto broken = layout;
    broken.offsets[2] += 1;
    CHECK_THROWS_AS(engram::shard_bounds_by_head(broken, 2), engram::config_error);
}

namespace {

/// A slow table that counts its gather calls and the rows it was asked for.
struct counting_table {
    using codec_type = engram::f32_codec;
    dense_t<float> t;
    mutable std::atomic<int> calls{0};
    mutable std::atomic<std::size_t> fetched{0};

    counting_table(std::size_t rows, std::size_t dim) : t(rows, dim) {
        for (std::size_t r = 0; r < rows; ++r) t.set_row(r, std::vector<float>(dim, static_cast<float>(r)));
    }
    [[nodiscard]] std::size_t rows() const noexcept { return t.rows(); }
    [[nodiscard]] std::size_t dim() const noexcept { return t.dim(); }
    void gather(std::span<const row_id> ids, std::span<float> out) const {
        calls.fetch_add(1);
        fetched.fetch_add(ids.size());
        t.gather(ids, out);
    }
};

} // namespace

TEST_CASE("cached table: one inner gather per batch, duplicates fetched once", "[storage][cached]") {
    const std::size_t dim = 4;
    auto inner = std::make_shared<counting_table>(100, dim);
    engram::cached_table<counting_table> cache(inner, std::size_t{64} << 10);
    std::vector<row_id> ids = {5, 5, 7, 5, 7, 9};
    std::vector<float> out(ids.size() * dim);
    cache.gather(ids, out);
    CHECK(inner->calls.load() == 1);
    CHECK(inner->fetched.load() == 3);
    CHECK(cache.misses() == 3);
    CHECK(cache.hits() == 3);
    for (std::size_t i = 0; i < ids.size(); ++i) CHECK(out[i * dim + 2] == static_cast<float>(ids[i]));
    // All cached now: no inner call.
    std::fill(out.begin(), out.end(), 0.0f);
    cache.gather(ids, out);
    CHECK(inner->calls.load() == 1);
    CHECK(cache.hits() == 9);
    CHECK(cache.hit_rate() == 0.75);
    for (std::size_t i = 0; i < ids.size(); ++i) CHECK(out[i * dim] == static_cast<float>(ids[i]));
    // A mixed batch fetches only the missing rows.
    ids = {9, 11, 5, 12, 11};
    out.assign(ids.size() * dim, 0.0f);
    cache.gather(ids, out);
    CHECK(inner->calls.load() == 2);
    CHECK(inner->fetched.load() == 5);
    CHECK(cache.misses() == 5);
    CHECK(cache.hits() + cache.misses() == 17);
    for (std::size_t i = 0; i < ids.size(); ++i) CHECK(out[i * dim + 3] == static_cast<float>(ids[i]));
    cache.reset_counters();
    CHECK(cache.hits() == 0);
    CHECK(cache.misses() == 0);
    CHECK(cache.hit_rate() == 0.0);
    CHECK(cache.contains(12));
    cache.invalidate(12);
    CHECK_FALSE(cache.contains(12));
    CHECK(cache.contains(5));
    cache.clear();
    CHECK_FALSE(cache.contains(5));
    // Invalid ids never reach the inner table or the counters.
    ids = {1, 100};
    out.assign(ids.size() * dim, 0.0f);
    CHECK_THROWS_AS(cache.gather(ids, out), engram::input_error);
    CHECK(inner->calls.load() == 2);
    CHECK(cache.hits() + cache.misses() == 0);
}

TEST_CASE("cached table: least recently used row of a set is evicted", "[storage][cached]") {
    const std::size_t dim = 4;
    using cache_t = engram::cached_table<counting_table>;
    auto inner = std::make_shared<counting_table>(100, dim);
    cache_t cache(inner, cache_t::set_bytes(dim)); // exactly one set: every row maps to it
    REQUIRE(cache.sets() == 1);
    REQUIRE(cache.slots() == cache_t::ways);
    REQUIRE(cache.capacity_bytes() == cache_t::set_bytes(dim));
    std::vector<float> out(dim);
    auto get = [&](row_id r) {
        cache.gather(std::span<const row_id>(&r, 1), out);
        REQUIRE(out[0] == static_cast<float>(r));
    };
    for (row_id r = 0; r < 8; ++r) get(r);
    get(0); // row 0 is now the most recently used, row 1 the least
    CHECK(cache.hits() == 1);
    get(8);
    CHECK_FALSE(cache.contains(1));
    CHECK(cache.contains(0));
    CHECK(cache.contains(8));
    get(9); // then row 2
    CHECK_FALSE(cache.contains(2));
    CHECK(cache.contains(3));
    // An invalidated slot is reused before any eviction.
    cache.invalidate(5);
    get(10);
    CHECK(cache.contains(3));
    CHECK(cache.contains(10));
}

TEST_CASE("cached table: capacity and construction", "[storage][cached]") {
    using cache_t = engram::cached_table<dense_t<float>>;
    auto inner = std::make_shared<dense_t<float>>(1000, 16);
    CHECK(cache_t::set_bytes(16) == 8 * (64 + 12) + 4);
    CHECK_THROWS_AS(cache_t(inner, cache_t::set_bytes(16) - 1), engram::config_error);
    CHECK_THROWS_AS(cache_t(nullptr, 1 << 20), engram::config_error);
    cache_t c(inner, 100000);
    CHECK(c.sets() == 100000 / cache_t::set_bytes(16));
    CHECK(c.capacity_bytes() <= 100000);
    CHECK(&c.inner() == inner.get());
    auto moved = std::move(c);
    CHECK(moved.rows() == 1000);
    CHECK(moved.slots() == 8 * (100000 / cache_t::set_bytes(16)));
    cache_t none;
    CHECK(none.rows() == 0);
    CHECK(none.hit_rate() == 0.0);
    CHECK_NOTHROW(none.gather({}, {}));
}

TEST_CASE("cached_storage: set_row writes the inner table and drops the cached copy", "[storage][cached]") {
    engram::cached_storage<engram::dense_storage, std::size_t{16} << 10>::table<bfloat16> t(50, 8);
    std::vector<float> out(8);
    t.get_row(7, out);
    CHECK(out[0] == 0.0f);
    CHECK(t.contains(7));
    t.set_row(7, std::vector<float>(8, 1.5f));
    CHECK_FALSE(t.contains(7));
    t.get_row(7, out);
    CHECK(out[5] == 1.5f);
    CHECK(t.inner_table().row(7)[0] == bfloat16::from_float(1.5f));
    CHECK(t.hits() == 0);
    CHECK(t.misses() == 2);
    CHECK_THROWS_AS(t.set_row(50, out), engram::input_error);
    CHECK_THROWS_AS(t.get_row(50, out), engram::input_error);
}
