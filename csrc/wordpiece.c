/*
 * wordpiece.c -- WordPiece's greedy longest-match-first split of a word into vocabulary
 * pieces, through a byte trie of the vocabulary (st_core.h, "wordpiece.c").
 *
 * The tokenizers library looks for the longest vocabulary entry at each position by trying
 * every end from the word's end down: a hash lookup of a new string per try, quadratic in the
 * word's length.  A run's variant texts glue up to eight copies of a token to a sentence's
 * word ("replayreplayreplayThe"), so that search was most of the host's row building.  A trie
 * walk finds the same longest entry in one pass over the bytes it matches.
 *
 * The trie has two roots: node 0 holds every entry as it is (a word's first piece), node 1
 * the entries that begin with the continuing-subword prefix ("##"), without it (the later
 * pieces).  Its edges live in one open-addressing hash table keyed by (node, byte); the
 * number of nodes is bounded by twice the entries' total length (an entry with the prefix
 * goes under both roots), so nothing grows after st_wp_new.
 */
#include "st_core.h"

#include <stdlib.h>
#include <string.h>

struct st_wp {
    int64_t n_nodes;
    int64_t *term;        /* [nodes] the id of the entry ending at each node, -1: none */
    uint64_t *keys;       /* [size] edge (node << 8 | byte) + 1; 0: an empty slot */
    int64_t *child;       /* [size] the edge's child node */
    uint64_t mask;        /* size - 1 (size a power of two, at least twice the edges) */
};

/* The table slot where key lives, or the empty slot where it would go. */
static uint64_t wp_slot(const st_wp *wp, uint64_t key)
{
    uint64_t h = (key * 0x9E3779B97F4A7C15ull) >> 17;
    while (wp->keys[h & wp->mask] != 0 && wp->keys[h & wp->mask] != key) h++;
    return h & wp->mask;
}

/* The child of node along byte b, or -1. */
static int64_t wp_child(const st_wp *wp, int64_t node, unsigned char b)
{
    uint64_t key = (((uint64_t)node << 8) | b) + 1, s = wp_slot(wp, key);
    return wp->keys[s] == key ? wp->child[s] : -1;
}

/* Puts s[0..n) under root with id; 0, or 1 when an entry already ends there. */
static int wp_insert(st_wp *wp, int64_t root, const unsigned char *s, int64_t n, int64_t id)
{
    int64_t node = root, i;
    for (i = 0; i < n; i++) {
        uint64_t key = (((uint64_t)node << 8) | s[i]) + 1, slot = wp_slot(wp, key);
        if (wp->keys[slot] == 0) {
            wp->keys[slot] = key;
            wp->child[slot] = wp->n_nodes;
            wp->term[wp->n_nodes++] = -1;
        }
        node = wp->child[slot];
    }
    if (wp->term[node] >= 0) return 1;
    wp->term[node] = id;
    return 0;
}

void st_wp_free(st_wp *wp)
{
    if (!wp) return;
    free(wp->term);
    free(wp->keys);
    free(wp->child);
    free(wp);
}

int st_wp_new(const char *const *entries, const int64_t *lens, st_ivec ids, int64_t n,
              const char *prefix, int64_t prefix_len, st_wp **out, int64_t *bad)
{
    st_wp *wp;
    int64_t i, total = 0, max_nodes;
    uint64_t size = 16;
    *out = NULL;
    *bad = -1;
    if (n < 0 || ids.n != n || prefix_len < 0) return ST_ERR_VALUE;
    for (i = 0; i < n; i++) {
        if (lens[i] < 0 || st_ivec_at(ids, i) < 0) {
            *bad = i;
            return ST_ERR_VALUE;
        }
        if (lens[i] > INT64_MAX / 8 - total) return ST_ERR_NOMEM;
        total += lens[i];
    }
    /* at most one new node per byte under each root: an entry with the prefix goes under both */
    max_nodes = 2 * total + 2;
    while (size < (uint64_t)(2 * max_nodes)) size <<= 1;
    wp = (st_wp *)calloc(1, sizeof *wp);
    if (!wp) return ST_ERR_NOMEM;
    wp->term = (int64_t *)malloc((size_t)max_nodes * sizeof(int64_t));
    wp->keys = (uint64_t *)calloc((size_t)size, sizeof(uint64_t));
    wp->child = (int64_t *)malloc((size_t)size * sizeof(int64_t));
    if (!wp->term || !wp->keys || !wp->child) {
        st_wp_free(wp);
        return ST_ERR_NOMEM;
    }
    wp->mask = size - 1;
    wp->term[0] = wp->term[1] = -1;
    wp->n_nodes = 2;
    for (i = 0; i < n; i++) {
        const unsigned char *s = (const unsigned char *)entries[i];
        int64_t id = st_ivec_at(ids, i);
        if (lens[i] == 0) continue;   /* an empty entry matches nothing */
        if (wp_insert(wp, 0, s, lens[i], id) ||
            (lens[i] > prefix_len && memcmp(s, prefix, (size_t)prefix_len) == 0 &&
             wp_insert(wp, 1, s + prefix_len, lens[i] - prefix_len, id))) {
            *bad = i;   /* the same entry twice */
            st_wp_free(wp);
            return ST_ERR_VALUE;
        }
    }
    *out = wp;
    return ST_OK;
}

/* 1 when c is an ASCII letter or digit. */
static int wp_alnum(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

int st_wp_encode(const st_wp *wp, const char *const *words, const int64_t *lens, int64_t n,
                 int lowercase, int64_t max_chars, int64_t unk_id, int64_t *out, int64_t *counts)
{
    int64_t w, pos = 0;
    for (w = 0; w < n; w++) {
        const unsigned char *s = (const unsigned char *)words[w];
        int64_t len = lens[w], i, start = 0, got = 0;
        for (i = 0; i < len && wp_alnum(s[i]); i++) {}
        if (i < len) {   /* not a word of ASCII letters and digits: the caller's to tokenize */
            counts[w] = -1;
            continue;
        }
        if (len > max_chars) {
            out[pos] = unk_id;
            counts[w] = 1;
            pos++;
            continue;
        }
        while (start < len) {
            int64_t node = start == 0 ? 0 : 1, best = -1, best_end = start;
            for (i = start; i < len; i++) {
                unsigned char c = s[i];
                if (lowercase && c >= 'A' && c <= 'Z') c = (unsigned char)(c - 'A' + 'a');
                node = wp_child(wp, node, c);
                if (node < 0) break;
                if (wp->term[node] >= 0) {
                    best = wp->term[node];
                    best_end = i + 1;
                }
            }
            if (best < 0) {   /* no entry fits here: the whole word is unknown */
                out[pos] = unk_id;
                got = 1;
                break;
            }
            out[pos + got++] = best;
            start = best_end;
        }
        counts[w] = got;
        pos += got;
    }
    return ST_OK;
}
