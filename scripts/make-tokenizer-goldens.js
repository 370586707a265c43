#!/usr/bin/env node
// SPDX-License-Identifier: MIT
// Writes the tokenizer golden files of tests/data/tokenizers with the Hugging Face tokenizers
// library itself (its Node binding, npm @anush008/tokenizers 0.6.0, which wraps tokenizers 0.22.2):
//   decoder_cases.json  each decoder configuration with token sequences and the text the
//                       library's decode gives them
//   <case>.json         small tokenizer.json files, one per model and decoder kind
//   <case>.txt          their canonical tables (scripts/canonical-reference.js)
// Usage: node scripts/make-tokenizer-goldens.js OUT_DIR [BINDING_DIR]
'use strict';

const fs = require('fs');
const path = require('path');
const {execFileSync} = require('child_process');

if (process.argv.length < 3 || process.argv.length > 4) {
    process.stderr.write('usage: node make-tokenizer-goldens.js OUT_DIR [BINDING_DIR]\n');
    process.exit(2);
}
const outDir = process.argv[2];
const bindingDir = process.argv[3] || __dirname;
const tk = require(require.resolve('@anush008/tokenizers', {paths: [bindingDir]}));
fs.mkdirSync(outDir, {recursive: true});

const M = '\u2581'; // the SentencePiece meta space
const byteTokens = Array.from({length: 256}, (_, b) => '<0x' + b.toString(16).toUpperCase().padStart(2, '0') + '>');

function added(id, content, special = true) {
    return {id, content, single_word: false, lstrip: false, rstrip: false, normalized: !special, special};
}

/// A tokenizer.json around a model and a decoder (null: none; undefined: the field is left out).
function tokenizerJson(model, decoder, addedTokens = []) {
    const doc = {version: '1.0', truncation: null, padding: null, added_tokens: addedTokens, normalizer: null,
                 pre_tokenizer: null, post_processor: null};
    if (decoder !== undefined) doc.decoder = decoder;
    doc.model = model;
    return doc;
}
function bpe(tokens, extra = {}) {
    const vocab = {};
    tokens.forEach((t, i) => { vocab[t] = i; });
    return {type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null,
            fuse_unk: false, byte_fallback: false, vocab, merges: [], ...extra};
}

// ---- decoder cases: token sequences through one decoder --------------------------------------

const decoderCases = [
    {name: 'ByteLevel', decoder: {type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true},
     sequences: [['\u0120hello'], ['\u00c3', '\u00a9'], ['\u00c3'], ['<\uff5cUser\uff5c>'],
                 ['\u0120a', '<\uff5cUser\uff5c>', 'b'], ['\u010a\u010a', '\u0109x'], ['\u00e2\u0124', '\u00ac'], []]},
    {name: 'Metaspace always', decoder: {type: 'Metaspace', replacement: M, prepend_scheme: 'always', split: true},
     sequences: [[M + M + 'a' + M + 'b'], [M + 'a', M + 'b', 'c' + M], ['x'], [M]]},
    {name: 'Metaspace first', decoder: {type: 'Metaspace', replacement: M, prepend_scheme: 'first', split: false},
     sequences: [[M + M + 'a' + M + 'b'], [M + 'a', M + 'b']]},
    {name: 'Metaspace never', decoder: {type: 'Metaspace', replacement: M, prepend_scheme: 'never', split: true},
     sequences: [[M + M + 'a' + M + 'b'], [M + 'a', M + 'b']]},
    {name: 'Metaspace add_prefix_space', decoder: {type: 'Metaspace', replacement: M, add_prefix_space: true},
     sequences: [[M + 'a' + M], [M + 'a', M + 'b']]},
    {name: 'Metaspace other replacement', decoder: {type: 'Metaspace', replacement: '_', prepend_scheme: 'always'},
     sequences: [['_a_' + M], ['a', '_b']]},
    {name: 'Replace', decoder: {type: 'Replace', pattern: {String: M}, content: ' '},
     sequences: [[M + 'a' + M], ['a', M + 'b'], ['']]},
    {name: 'Replace longer pattern', decoder: {type: 'Replace', pattern: {String: 'aa'}, content: '-'},
     sequences: [['aaab'], ['aaaa', 'a']]},
    {name: 'Replace empty pattern', decoder: {type: 'Replace', pattern: {String: ''}, content: '-'},
     sequences: [['ab'], [''], ['\u00e9x']]},
    {name: 'ByteFallback', decoder: {type: 'ByteFallback'},
     sequences: [['<0x41>'], ['<0xE2>', '<0x82>', '<0xAC>'], ['<0xE2>', '<0x82>'], ['<0xE2>', 'a', '<0x82>'],
                 ['<0x+F>'], ['<0x4a>'], ['<0X41>'], ['<0xzz>'], ['<0x-1>'], ['<0xC3>', '<0xA9>', 'x'], ['<0x00>'],
                 ['<0xFF>']]},
    {name: 'Fuse', decoder: {type: 'Fuse'}, sequences: [['a', 'b', ' c'], ['x']]},
    {name: 'Strip', decoder: {type: 'Strip', content: ' ', start: 1, stop: 1},
     sequences: [['  a  '], ['a', ' b ', 'c']]},
    {name: 'Strip other content', decoder: {type: 'Strip', content: 'x', start: 2, stop: 3},
     sequences: [['xxxaxxxx'], ['ax'], ['xa']]},
    {name: 'WordPiece', decoder: {type: 'WordPiece', prefix: '##', cleanup: true},
     sequences: [['##ab'], ['a', '##b', 'c', '.'], ['i', 'do', 'not'], ['x', ',', 'y', "'", 's'], ['he', "n't"]]},
    {name: 'WordPiece without cleanup', decoder: {type: 'WordPiece', prefix: '##', cleanup: false},
     sequences: [['a', '##b', 'c', '.']]},
    {name: 'BPEDecoder', decoder: {type: 'BPEDecoder', suffix: '</w>'},
     sequences: [['ab</w>', 'c</w>'], ['a</w>b'], ['x</w>', 'y']]},
    {name: 'BPEDecoder empty suffix', decoder: {type: 'BPEDecoder', suffix: ''}, sequences: [['ab', 'c']]},
    {name: 'CTC', decoder: {type: 'CTC', pad_token: '<pad>', word_delimiter_token: '|', cleanup: true},
     sequences: [['a', 'a', '<pad>', 'b', '|', 'c'], ['<pad>'], ['x<pad>y'], ['|'], ['a', ' .']]},
    {name: 'CTC without cleanup', decoder: {type: 'CTC', pad_token: '<pad>', word_delimiter_token: '|', cleanup: false},
     sequences: [['a|b', '<pad>', 'c']]},
    {name: 'Llama 2', decoder: {type: 'Sequence', decoders: [{type: 'Replace', pattern: {String: M}, content: ' '},
                                                              {type: 'ByteFallback'}, {type: 'Fuse'},
                                                              {type: 'Strip', content: ' ', start: 1, stop: 0}]},
     sequences: [[M + 'Hello', M + 'world', '<0x21>'], ['<0xE2>'], [M + M + 'x'], [M], ['<0x20>', 'a']]},
    {name: 'Gemma', decoder: {type: 'Sequence', decoders: [{type: 'Replace', pattern: {String: M}, content: ' '},
                                                            {type: 'ByteFallback'}, {type: 'Fuse'}]},
     sequences: [[M + 'Hello', M + 'world', '<0x0A>'], ['<0xF0>', '<0x9F>', '<0x98>', '<0x80>'], [M]]},
    {name: 'nested Sequence', decoder: {type: 'Sequence', decoders: [
        {type: 'Sequence', decoders: [{type: 'Replace', pattern: {String: M}, content: ' '}]},
        {type: 'Sequence', decoders: []}, {type: 'Fuse'}]},
     sequences: [[M + 'a', M + 'b']]},
    {name: 'no decoder', decoder: null, sequences: [['a', 'b'], [M + 'x'], []]},
];

async function decoderGoldens() {
    const out = [];
    for (const c of decoderCases) {
        const tokens = [...new Set(c.sequences.flat())];
        const t = tk.Tokenizer.fromString(JSON.stringify(tokenizerJson(bpe(tokens), c.decoder)));
        const vocab = t.getVocab(false);
        const sequences = [];
        for (const seq of c.sequences)
            sequences.push({tokens: seq, text: await t.decode(seq.map((s) => vocab[s]), false)});
        out.push({name: c.name, decoder: c.decoder, sequences});
    }
    fs.writeFileSync(path.join(outDir, 'decoder_cases.json'), JSON.stringify(out, null, 1) + '\n');
}

// ---- whole tokenizers: canonical tables ------------------------------------------------------

const words = ['the', 'The', 'THE', 'hello', 'Hello', 'Stra\u00dfe', 'strasse', '\u00e9t\u00e9', 'e\u0301te\u0301',
               '\ufb01ne', 'fine', '\uff21\uff22', 'ab', '\u0130stanbul', 'istanbul', '\u03a3\u03bf\u03c6\u03af\u03b1',
               '\u03c3\u03bf\u03c6\u03b9\u03b1', '\u2460', '1', '\u00bd', '\u4e2d\u6587', '\u0915\u093f', '\u0915',
               '\u1e9e', '\u00df', '\u2126', '\u03c9', 'x\u200by'];
const spacey = [M, M + M, M + M + M, M + '\t', '\t', '\n', M + '\n' + M, ' ', '  ', '\u3000', '\u00a0'];

const tables = {
    // Llama 2: BPE with byte fallback, decoder Replace, ByteFallback, Fuse, Strip.
    sentencepiece_llama2: tokenizerJson(
        bpe(['<unk>', '<s>', '</s>', ...byteTokens, ...spacey, ...words, ...words.map((w) => M + w)],
            {unk_token: '<unk>', fuse_unk: true, byte_fallback: true}),
        {type: 'Sequence', decoders: [{type: 'Replace', pattern: {String: M}, content: ' '}, {type: 'ByteFallback'},
                                      {type: 'Fuse'}, {type: 'Strip', content: ' ', start: 1, stop: 0}]},
        [added(0, '<unk>'), added(1, '<s>'), added(2, '</s>'), added(400, M + 'Added' + M, false),
         added(401, '<0x41>')]),
    // Gemma: the same without Strip; added tokens that are also vocabulary entries.
    sentencepiece_gemma: tokenizerJson(
        bpe(['<pad>', '<eos>', '<bos>', '<unk>', ...byteTokens, ...spacey, ...words, ...words.map((w) => M + w),
             '<start_of_turn>'], {unk_token: '<unk>', fuse_unk: true, byte_fallback: true}),
        {type: 'Sequence', decoders: [{type: 'Replace', pattern: {String: M}, content: ' '}, {type: 'ByteFallback'},
                                      {type: 'Fuse'}]},
        [added(0, '<pad>'), added(1, '<eos>'), added(2, '<bos>'), added(3, '<unk>'), added(320, '<start_of_turn>'),
         added(330, M + M), added(331, '<end_of_turn>')]),
    // A Unigram vocabulary with the Metaspace decoder (T5, ALBERT, XLNet style).
    unigram_metaspace: tokenizerJson(
        {type: 'Unigram', unk_id: 2, byte_fallback: false,
         vocab: ['<pad>', '</s>', '<unk>', ...spacey, ...words, ...words.map((w) => M + w), 'a' + M + 'b',
                 M + 'x' + M, ...byteTokens.slice(60, 70)].map((p, i) => [p, -i / 10])},
        {type: 'Metaspace', replacement: M, prepend_scheme: 'always', split: true},
        [added(0, '<pad>'), added(1, '</s>'), added(2, '<unk>'), added(200, '<extra_id_0>')]),
    // Metaspace that keeps the first token's meta spaces.
    bpe_metaspace_never: tokenizerJson(
        bpe(['<unk>', ...spacey, ...words.map((w) => M + w), 'a' + M + 'b'], {unk_token: '<unk>'}),
        {type: 'Metaspace', replacement: M, prepend_scheme: 'never', split: false}),
    bpe_metaspace_first: tokenizerJson(
        bpe(['<unk>', ...spacey, ...words.map((w) => M + w), 'a' + M + 'b'], {unk_token: '<unk>'}),
        {type: 'Metaspace', replacement: M, prepend_scheme: 'first', split: true}),
    // BERT: a WordPiece vocabulary and decoder.
    wordpiece_bert: tokenizerJson(
        {type: 'WordPiece', unk_token: '[UNK]', continuing_subword_prefix: '##', max_input_chars_per_word: 100,
         vocab: Object.fromEntries(['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', ...words, ...words.map((w) => '##' + w),
                                    '.', ',', "'", 'do', 'not', 'x .', ' .', '##', 'a ,b', 'i do not']
                                       .map((t, i) => [t, i]))},
        {type: 'WordPiece', prefix: '##', cleanup: true},
        [added(0, '[PAD]'), added(1, '[UNK]'), added(2, '[CLS]'), added(3, '[SEP]'), added(4, '[MASK]')]),
    // A word-level vocabulary without a decoder field: the text of a token is the token.
    wordlevel_no_decoder: tokenizerJson(
        {type: 'WordLevel', unk_token: '<unk>',
         vocab: Object.fromEntries(['<unk>', ...words, ...spacey, '\u0120hello', 'Hello!'].map((t, i) => [t, i]))},
        undefined),
    // CLIP style: end-of-word suffixes and the BPE decoder.
    bpe_suffix: tokenizerJson(
        bpe(['<|startoftext|>', 'hello</w>', 'Hello</w>', 'hel', 'lo</w>', 'a</w>b', '</w>', 'x', ...words.map((w) =>
            w + '</w>')], {end_of_word_suffix: '</w>'}),
        {type: 'BPEDecoder', suffix: '</w>'}, [added(0, '<|startoftext|>')]),
    // wav2vec2 style: CTC.
    ctc: tokenizerJson(
        {type: 'WordLevel', unk_token: '<unk>',
         vocab: Object.fromEntries(['<pad>', '<s>', '</s>', '<unk>', '|', 'A', 'a', "'", 'B', 'x<pad>y', 'a|b', ' .']
                                       .map((t, i) => [t, i]))},
        {type: 'CTC', pad_token: '<pad>', word_delimiter_token: '|', cleanup: true}),
    // Added tokens whose ids the library does not take from the file, holes in the vocabulary,
    // and added tokens that go through the ByteLevel decoder.
    added_token_ids: tokenizerJson(
        {...bpe([]), vocab: {a: 0, b: 1, c: 5, '\u0120x': 7, A: 9}},
        {type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true},
        [added(9, 'zz'), added(1, 'q'), added(0, 'c'), added(2, 'zz'), added(7, ''), added(3, '\u00e9'),
         added(4, '\u0120x'), added(6, 'Q'), added(8, '\u00c3\u00a9')]),
    // Every character of several Unicode blocks as a token (no decoder): the normalisation keys
    // against the library's own Unicode tables.
    unicode_blocks: tokenizerJson(
        {type: 'WordLevel', unk_token: '<unk>', vocab: Object.fromEntries(unicodeTokens().map((t, i) => [t, i]))},
        null),
};

function unicodeTokens() {
    const out = ['<unk>'];
    const ranges = [[0x20, 0x7e], [0xa0, 0x24f], [0x250, 0x36f], [0x370, 0x52f], [0x1d00, 0x1fff], [0x2000, 0x218f],
                    [0x2460, 0x24ff], [0x3000, 0x30ff], [0x3130, 0x33ff], [0xa640, 0xa7ff], [0xab30, 0xab6f],
                    [0xf900, 0xfaff], [0xfb00, 0xfb4f], [0xfe10, 0xfe6f], [0xff00, 0xffef], [0x10400, 0x1044f],
                    [0x1d400, 0x1d7ff], [0x1e900, 0x1e95f], [0x1f100, 0x1f1ff], [0x1f600, 0x1f64f]];
    for (const [lo, hi] of ranges)
        for (let cp = lo; cp <= hi; ++cp) out.push(String.fromCodePoint(cp));
    // Letters with combining marks, and marks alone.
    for (const base of ['a', 'E', '\u0131', '\u03b1', '\u0627']) {
        for (const mark of [0x300, 0x301, 0x308, 0x327, 0x345, 0x64b, 0x93c, 0x20dd])
            out.push(base + String.fromCodePoint(mark));
    }
    return [...new Set(out)];
}

async function tableGoldens() {
    for (const [name, doc] of Object.entries(tables)) {
        const file = path.join(outDir, name + '.json');
        fs.writeFileSync(file, JSON.stringify(doc) + '\n');
        const out = execFileSync(process.execPath, [path.join(__dirname, 'canonical-reference.js'), file,
                                                    path.join(outDir, name + '.txt'), bindingDir]);
        process.stdout.write(out.toString().replace(outDir + path.sep, ''));
    }
}

(async () => {
    await decoderGoldens();
    await tableGoldens();
})().catch((e) => {
    process.stderr.write(`make-tokenizer-goldens: ${e && e.message ? e.message : e}\n`);
    process.exit(1);
});
