/* The annealing loop of jvmail.scheduler.search.Board, compiled.
 *
 * It makes the decisions of Board.anneal's Python loop exactly: the same floating-point
 * operations in the same order (Python floats are IEEE doubles; build without -ffast-math and
 * with -ffp-contract=off), the candidates of Board.best_insertion in the same order, and the
 * chosen arcs of each list, promotion and pair kept in the order of the Python lists (append at
 * the end, removal shifts the rest), since that order decides ties. The random draws come from
 * Python's generator, drawn beforehand, one a round.
 *
 * Membership lists are stored flat: the chosen arcs of list i are
 * list_items[list_start[i] .. list_start[i] + list_count[i]), and list_start[i + 1] -
 * list_start[i] is the number of arcs of list i, the most it can ever hold. The same for
 * promotions and pairs (a pair is a (giver, receiver) couple of partners).
 */

#include <float.h>
#include <stdlib.h>
#include <string.h>

#if !defined(FLT_EVAL_METHOD) || FLT_EVAL_METHOD != 0
#error "doubles must be evaluated as doubles (no extended precision) to match Python"
#endif

typedef struct {
    int n_arcs, n_lists, n_promos, n_partners, n_pairs, words;
    int pair_cap, any_locked;
    double w1, w2;
    const int *a_list, *a_promo, *a_giver, *a_taker, *a_pair;
    const int *a_first, *a_last, *a_rank;
    const unsigned char *a_partial, *locked;
    const double *a_value, *a_bonus;
    const unsigned long long *a_niches; /* `words` words an arc */
    const int *list_cap, *list_slots, *list_days, *promo_want;
    const double *tau;
    unsigned char *chosen;
    double *balance, *pen_now;
    double *totals; /* the board's value and kept bonus */
    const int *list_start, *promo_start, *pair_start;
    int *list_count, *promo_count, *pair_count;
    int *list_items, *promo_items, *pair_items;
    unsigned char *pair_seen; /* whether the pair is a key of Board.on_pair */
    int *pair_new;            /* pairs that became keys, in order */
    int *pair_new_count;
    unsigned char *partner_touched; /* partners whose balance was written */
} jv_board;

/* Scratch space, sized once from the largest list, promotion and pair. */
typedef struct {
    int *lst, *promo, *singles, *kept_singles, *arcs, *waiting, *today;
    double *from_o, *from_qb, *from_oc, *from_q;
} jv_scratch;

static const double EPS = 1e-9;

/* Partner p's balance penalty at net x: Board's `_penalty`, written out. */
static double penalty(const jv_board *b, int p, double x)
{
    double size = x > 0 ? x : -x;
    double over = size - b->tau[p];
    return over > 0 ? b->w1 * size + b->w2 * over : b->w1 * size;
}

static int contains(const int *items, int count, int x)
{
    for (int k = 0; k < count; k++) {
        if (items[k] == x) {
            return 1;
        }
    }
    return 0;
}

static void append(int *items, int *count, int x)
{
    items[(*count)++] = x;
}

/* Python's list.remove: the first occurrence leaves, the rest shift down. */
static void remove_first(int *items, int *count, int x)
{
    int k = 0;
    while (k < *count && items[k] != x) {
        k++;
    }
    if (k == *count) {
        return;
    }
    memmove(items + k, items + k + 1, (size_t)(*count - k - 1) * sizeof(int));
    (*count)--;
}

static int niches_meet(const jv_board *b, int x, int y)
{
    const unsigned long long *nx = b->a_niches + (size_t)x * (size_t)b->words;
    const unsigned long long *ny = b->a_niches + (size_t)y * (size_t)b->words;
    for (int w = 0; w < b->words; w++) {
        if (nx[w] & ny[w]) {
            return 1;
        }
    }
    return 0;
}

/* Board._edf on arcs[0 .. count), which it reorders by rank. */
static int edf(const jv_board *b, const jv_scratch *s, int i, int *waiting, int count)
{
    for (int k = 1; k < count; k++) { /* ranks are distinct: a plain insertion sort */
        int x = waiting[k], m = k;
        while (m > 0 && b->a_rank[waiting[m - 1]] > b->a_rank[x]) {
            waiting[m] = waiting[m - 1];
            m--;
        }
        waiting[m] = x;
    }
    int slots = b->list_slots[i];
    int day = 0;
    while (count > 0) {
        int placed = 0;
        for (int k = 0; k < count; k++) {
            if (placed == slots) {
                break;
            }
            int a = waiting[k];
            if (b->a_first[a] <= day && day <= b->a_last[a]) {
                int clash = 0;
                for (int t = 0; t < placed && !clash; t++) {
                    clash = niches_meet(b, a, s->today[t]);
                }
                if (!clash) {
                    s->today[placed++] = a;
                }
            }
        }
        int left = 0;
        for (int k = 0; k < count; k++) {
            if (!contains(s->today, placed, waiting[k])) {
                waiting[left++] = waiting[k];
            }
        }
        count = left;
        if (count > 0 && b->a_last[waiting[0]] <= day) {
            return 0;
        }
        day++;
    }
    return 1;
}

/* Board.fits(i, [x for x in on_list[i] if x != skip] + [add]). */
static int fits(const jv_board *b, const jv_scratch *s, int i, int skip, int add)
{
    const int *listed = b->list_items + b->list_start[i];
    int count = 0;
    for (int k = 0; k < b->list_count[i]; k++) {
        if (listed[k] != skip) {
            s->arcs[count++] = listed[k];
        }
    }
    s->arcs[count++] = add;
    if (count > b->list_cap[i]) {
        return 0;
    }
    if (count <= 1) {
        return 1;
    }
    if (b->list_slots[i] == 1) {
        int partial = 0;
        for (int k = 0; k < count && !partial; k++) {
            partial = b->a_partial[s->arcs[k]];
        }
        if (!partial) {
            return count <= b->list_days[i];
        }
    }
    int kept = 0;
    for (int k = 0; k < count; k++) {
        if (b->a_last[s->arcs[k]] >= 0) {
            s->waiting[kept++] = s->arcs[k];
        }
    }
    return edf(b, s, i, s->waiting, kept);
}

/* Board._solo_gain. */
static double solo_gain(const jv_board *b, int a, int adding)
{
    double v = b->a_value[a];
    int o = b->a_giver[a], q = b->a_taker[a];
    double worth = v + b->a_bonus[a];
    double total, d;
    if (adding) {
        total = 0.0 + worth;
        d = v;
    } else {
        total = 0.0 - worth;
        d = -v;
    }
    double po = penalty(b, o, b->balance[o] + d);
    double pq = penalty(b, q, b->balance[q] + -d);
    return total - po + b->pen_now[o] - pq + b->pen_now[q];
}

/* Board._replace_gain. */
static double replace_gain(const jv_board *b, int x, int a)
{
    double v = b->a_value[a], vb = b->a_value[x];
    int o = b->a_giver[a], q = b->a_taker[a];
    int ob = b->a_giver[x], qb = b->a_taker[x];
    double d_o = v, d_q = -v;
    int first = -1, second = -1;
    if (ob == o) {
        d_o += -vb;
    } else if (ob == q) {
        d_q += -vb;
    } else {
        first = ob;
    }
    if (qb == o) {
        d_o += vb;
    } else if (qb == q) {
        d_q += vb;
    } else {
        second = qb;
    }
    const double *balance = b->balance, *now = b->pen_now;
    double total = v + b->a_bonus[a] - vb - b->a_bonus[x];
    double po = penalty(b, o, balance[o] + d_o);
    double pq = penalty(b, q, balance[q] + d_q);
    total -= po - now[o] + pq - now[q];
    if (first >= 0) {
        total -= penalty(b, first, balance[first] + -vb) - now[first];
    }
    if (second >= 0) {
        total -= penalty(b, second, balance[second] + vb) - now[second];
    }
    return total;
}

/* Board._double_gain: the partners' moves summed in the order of a dict keyed by partner. */
static double double_gain(const jv_board *b, int x, int c, int a)
{
    double v = b->a_value[a], vb = b->a_value[x], vc = b->a_value[c];
    double total = 0.0 - (vb + b->a_bonus[x]) - (vc + b->a_bonus[c]) + (v + b->a_bonus[a]);
    int who[6] = {b->a_giver[x], b->a_taker[x], b->a_giver[c], b->a_taker[c], b->a_giver[a],
                  b->a_taker[a]};
    double by[6] = {-vb, vb, -vc, vc, v, -v};
    int keys[6];
    double moved[6];
    int count = 0;
    for (int k = 0; k < 6; k++) {
        int m = 0;
        while (m < count && keys[m] != who[k]) {
            m++;
        }
        if (m == count) {
            keys[count] = who[k];
            moved[count++] = 0.0 + by[k];
        } else {
            moved[m] = moved[m] + by[k];
        }
    }
    for (int m = 0; m < count; m++) {
        int p = keys[m];
        total -= penalty(b, p, b->balance[p] + moved[m]) - b->pen_now[p];
    }
    return total;
}

/* Board._double_gains's price of (x, c) given what depends on x alone (at position k of the
 * list's candidates) or on c alone (at position m of the promotion's). */
static double pair_gain(const jv_board *b, const jv_scratch *s, int k, int m, int a)
{
    int x = s->lst[k], c = s->promo[m];
    int o = b->a_giver[a], q = b->a_taker[a];
    int qb = b->a_taker[x], oc = b->a_giver[c];
    if (oc == o || oc == qb || qb == q) {
        return double_gain(b, x, c, a);
    }
    double base = b->a_value[a] + b->a_bonus[a];
    double total = 0.0 - (b->a_value[x] + b->a_bonus[x]) - (b->a_value[c] + b->a_bonus[c]) + base;
    return total - s->from_o[k] - s->from_qb[k] - s->from_oc[m] - s->from_q[m];
}

/* penalty(p, balance[p] + d) - pen_now[p]: `change` in Board._double_gains. */
static double change(const jv_board *b, int p, double d)
{
    return penalty(b, p, b->balance[p] + d) - b->pen_now[p];
}

/* Board.toggle. */
static void toggle(const jv_board *b, int a)
{
    double v = b->a_value[a], bonus;
    int o = b->a_giver[a], q = b->a_taker[a];
    int i = b->a_list[a], j = b->a_promo[a], pid = b->a_pair[a];
    int *lst = b->list_items + b->list_start[i];
    int *promo = b->promo_items + b->promo_start[j];
    int *pair = b->pair_items + b->pair_start[pid];
    if (!b->pair_seen[pid]) {
        b->pair_seen[pid] = 1;
        b->pair_new[(*b->pair_new_count)++] = pid;
    }
    if (b->chosen[a]) {
        v = -v;
        bonus = -b->a_bonus[a];
        b->chosen[a] = 0;
        remove_first(lst, &b->list_count[i], a);
        remove_first(promo, &b->promo_count[j], a);
        remove_first(pair, &b->pair_count[pid], a);
    } else {
        bonus = b->a_bonus[a];
        b->chosen[a] = 1;
        append(lst, &b->list_count[i], a);
        append(promo, &b->promo_count[j], a);
        append(pair, &b->pair_count[pid], a);
    }
    b->totals[0] += v;
    b->totals[1] += bonus;
    b->balance[o] += v;
    b->balance[q] -= v;
    b->pen_now[o] = penalty(b, o, b->balance[o]);
    b->pen_now[q] = penalty(b, q, b->balance[q]);
    b->partner_touched[o] = 1;
    b->partner_touched[q] = 1;
}

/* The candidates that may leave alone for `a` (Board.best_insertion's `singles`). */
static int singles_for(const jv_board *b, const jv_scratch *s, int n_lst, int n_promo,
                       int list_full, int promo_full, int pair_full, const int *pair,
                       int n_pair)
{
    int count = 0;
    if (promo_full) {
        memcpy(s->singles, s->promo, (size_t)n_promo * sizeof(int));
        count = n_promo;
    } else if (list_full) {
        memcpy(s->singles, s->lst, (size_t)n_lst * sizeof(int));
        count = n_lst;
    } else {
        memcpy(s->singles, s->lst, (size_t)n_lst * sizeof(int));
        memcpy(s->singles + n_lst, s->promo, (size_t)n_promo * sizeof(int));
        count = n_lst + n_promo;
    }
    if (!pair_full) {
        return count;
    }
    int kept = 0;
    for (int k = 0; k < count; k++) {
        if (contains(pair, n_pair, s->singles[k])) {
            s->kept_singles[kept++] = s->singles[k];
        }
    }
    int before = kept;
    if (!(list_full || promo_full)) {
        for (int k = 0; k < n_pair; k++) {
            int x = pair[k];
            if (!b->locked[x] && !contains(s->kept_singles, before, x)) {
                s->kept_singles[kept++] = x;
            }
        }
    }
    memcpy(s->singles, s->kept_singles, (size_t)kept * sizeof(int));
    return kept;
}

/* The unlocked arcs of items[0 .. count) into out; how many. */
static int unlocked(const jv_board *b, const int *items, int count, int *out)
{
    int kept = 0;
    for (int k = 0; k < count; k++) {
        if (!b->any_locked || !b->locked[items[k]]) {
            out[kept++] = items[k];
        }
    }
    return kept;
}

/* Board.best_insertion(a, floor): whether a way in gains more than floor; the arcs it evicts
 * go to evict[0 .. *n_evict). */
static int best_insertion(const jv_board *b, const jv_scratch *s, int a, double floor,
                          int *evict, int *n_evict)
{
    int i = b->a_list[a], j = b->a_promo[a], pid = b->a_pair[a];
    int list_full = b->list_count[i] >= b->list_cap[i];
    int promo_full = b->promo_count[j] >= b->promo_want[j];
    const int *pair = b->pair_items + b->pair_start[pid];
    int n_pair = b->pair_count[pid];
    int pair_full = n_pair >= b->pair_cap;
    int n_lst = unlocked(b, b->list_items + b->list_start[i], b->list_count[i], s->lst);
    int n_promo = unlocked(b, b->promo_items + b->promo_start[j], b->promo_count[j], s->promo);
    int found = 0;
    if (!(list_full || promo_full || pair_full)) {
        double d = solo_gain(b, a, 1);
        if (d > floor && fits(b, s, i, -1, a)) {
            found = 1;
            *n_evict = 0;
            floor = d;
        }
    }
    if (!(list_full && promo_full)) {
        int count = singles_for(b, s, n_lst, n_promo, list_full, promo_full, pair_full, pair,
                                n_pair);
        for (int k = 0; k < count; k++) {
            int x = s->singles[k];
            double d = replace_gain(b, x, a);
            if (d > floor && fits(b, s, i, x, a)) {
                found = 1;
                evict[0] = x;
                *n_evict = 1;
                floor = d;
            }
        }
    }
    if (promo_full) {
        double v = b->a_value[a];
        int o = b->a_giver[a], q = b->a_taker[a];
        for (int k = 0; k < n_lst; k++) {
            int x = s->lst[k];
            s->from_o[k] = change(b, o, -b->a_value[x] + v);
            s->from_qb[k] = change(b, b->a_taker[x], b->a_value[x]);
        }
        for (int m = 0; m < n_promo; m++) {
            int c = s->promo[m];
            s->from_oc[m] = change(b, b->a_giver[c], -b->a_value[c]);
            s->from_q[m] = change(b, q, b->a_value[c] + -v);
        }
        for (int k = 0; k < n_lst; k++) {
            int x = s->lst[k];
            int x_in_pair = pair_full && contains(pair, n_pair, x);
            for (int m = 0; m < n_promo; m++) {
                int c = s->promo[m];
                if (pair_full && !x_in_pair && !contains(pair, n_pair, c)) {
                    continue;
                }
                double d = pair_gain(b, s, k, m, a);
                if (d > floor && fits(b, s, i, x, a)) {
                    found = 1;
                    evict[0] = x;
                    evict[1] = c;
                    *n_evict = 2;
                    floor = d;
                }
            }
        }
    }
    return found;
}

static int largest_group(const int *start, int groups)
{
    int most = 0;
    for (int g = 0; g < groups; g++) {
        int size = start[g + 1] - start[g];
        most = size > most ? size : most;
    }
    return most;
}

static void free_scratch(jv_scratch *s)
{
    free(s->lst);
    free(s->promo);
    free(s->singles);
    free(s->kept_singles);
    free(s->arcs);
    free(s->waiting);
    free(s->today);
    free(s->from_o);
    free(s->from_qb);
    free(s->from_oc);
    free(s->from_q);
}

static int alloc_scratch(const jv_board *b, jv_scratch *s)
{
    size_t lst = (size_t)largest_group(b->list_start, b->n_lists) + 2;
    size_t promo = (size_t)largest_group(b->promo_start, b->n_promos) + 2;
    size_t pair = (size_t)largest_group(b->pair_start, b->n_pairs) + 2;
    s->lst = malloc(lst * sizeof(int));
    s->promo = malloc(promo * sizeof(int));
    s->singles = malloc((lst + promo + pair) * sizeof(int));
    s->kept_singles = malloc((lst + promo + pair) * sizeof(int));
    s->arcs = malloc(lst * sizeof(int));
    s->waiting = malloc(lst * sizeof(int));
    s->today = malloc(lst * sizeof(int));
    s->from_o = malloc(lst * sizeof(double));
    s->from_qb = malloc(lst * sizeof(double));
    s->from_oc = malloc(promo * sizeof(double));
    s->from_q = malloc(promo * sizeof(double));
    if (!s->lst || !s->promo || !s->singles || !s->kept_singles || !s->arcs || !s->waiting ||
        !s->today || !s->from_o || !s->from_qb || !s->from_oc || !s->from_q) {
        free_scratch(s);
        return 0;
    }
    return 1;
}

/* Board.anneal with draws[step] the generator's random() of round `step`. Returns 0, or
 * nonzero before changing anything: -1 when memory runs out, -2 when a draw is outside
 * [0, 1) and would pick no arc (a generator whose random() is not Python's: the Python loop
 * then does what Python does with it). */
int jv_anneal(const jv_board *b, const double *draws, long long rounds, double temperature)
{
    int n = b->n_arcs;
    for (long long step = 0; step < rounds; step++) {
        double x = draws[step] * (double)n;
        if (!(x >= 0.0 && x < (double)n)) {
            return -2;
        }
    }
    jv_scratch s;
    if (!alloc_scratch(b, &s)) {
        return -1;
    }
    int evict[2];
    int n_evict = 0;
    for (long long step = 0; step < rounds; step++) {
        int a = (int)(draws[step] * (double)n);
        double floor =
            EPS - temperature * (1.0 - (double)step / (double)rounds) * b->a_value[a];
        if (b->chosen[a]) {
            if (!b->locked[a] && solo_gain(b, a, 0) > floor) {
                toggle(b, a);
            }
            continue;
        }
        if (best_insertion(b, &s, a, floor, evict, &n_evict)) {
            for (int k = 0; k < n_evict; k++) {
                toggle(b, evict[k]);
            }
            toggle(b, a);
        }
    }
    free_scratch(&s);
    return 0;
}
