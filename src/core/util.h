/* Small helpers shared by every module: container_of, an intrusive list, array sizes. */
#ifndef PH_CORE_UTIL_H
#define PH_CORE_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define PH_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#define container_of(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

/* Doubly linked, circular, intrusive list [libuv queue.h, kernel list.h]. */
struct ph_list {
	struct ph_list *next, *prev;
};

static inline void ph_list_init(struct ph_list *l)
{
	l->next = l;
	l->prev = l;
}

static inline bool ph_list_empty(const struct ph_list *l)
{
	return l->next == l;
}

/* Inserts n before head, i.e. at the tail of the list headed by head. */
static inline void ph_list_add_tail(struct ph_list *head, struct ph_list *n)
{
	n->prev = head->prev;
	n->next = head;
	head->prev->next = n;
	head->prev = n;
}

/* Unlinks n and leaves it self-linked, so a second del is harmless. */
static inline void ph_list_del(struct ph_list *n)
{
	n->prev->next = n->next;
	n->next->prev = n->prev;
	n->next = n;
	n->prev = n;
}

#define ph_list_for_each_safe(pos, tmp, head)                                                      \
	for ((pos) = (head)->next, (tmp) = (pos)->next; (pos) != (head);                           \
	     (pos) = (tmp), (tmp) = (pos)->next)

/* SipHash-1-3 (Aumasson and Bernstein) of len bytes under the 128-bit key k. */
uint64_t ph_siphash13(const uint64_t k[2], const void *p, size_t len);

/* Fills buf with random bytes (getrandom; a weaker fallback when the pool is not ready). */
void ph_random(void *buf, size_t len);

/* Monotonic clock in milliseconds. */
uint64_t ph_now_ms(void);

/*
 * Parses a duration: a decimal number with an optional unit ms, s, m or h (no unit means
 * seconds). Returns 0 and the value in milliseconds in *ms, or -EINVAL.
 */
int ph_parse_duration(const char *s, uint64_t *ms);

/* Parses a decimal unsigned integer in [min, max]. Returns 0, -EINVAL or -ERANGE. */
int ph_parse_uint(const char *s, unsigned long long min, unsigned long long max,
                  unsigned long long *out);

/* Formats a byte count as "1.2 MiB" into buf. Returns buf. */
const char *ph_fmt_bytes(uint64_t n, char *buf, size_t len);

/*
 * Makes text that a peer wrote (a router's description of a mapping, its external address,
 * a URL it gave) safe to print or log, in place: terminal escape sequences (ESC [ ... final
 * byte; ESC ] and the other string sequences up to BEL or ESC \; ESC and one byte) are
 * removed, and every other control byte (0x00-0x1f, 0x7f), C1 control (U+0080-U+009F),
 * bidirectional override (U+202A-U+202E, U+2066-U+2069) and byte that is not part of valid
 * UTF-8 becomes '?'. Valid UTF-8 text is kept. s is NUL-terminated; the result is never
 * longer. Returns the new length.
 */
size_t ph_str_sanitize(char *s);

/*
 * Errors of our own beside errno's, negated like them (-PH_ENONAME): a name without an
 * address says why in its own words rather than as "No such file or directory".
 */
#define PH_ENONAME     4096 /* no such name (NXDOMAIN) */
#define PH_ENOADDR     4097 /* the name exists but has no address */
#define PH_EDNSFAIL    4098 /* the DNS server failed or refused to answer */
#define PH_EDNSTIMEOUT 4099 /* no DNS server answered in time */

/* The words for err, a negative errno or one of ours above (strerror() of -err else). */
const char *ph_strerror(int err);

/*
 * Opens path, a regular file of lines, for reading (a directory or a device is refused with
 * EINVAL: it has no lines, or no end). Returns the stream, or NULL with errno set.
 */
FILE *ph_file_open(const char *path);

#endif /* PH_CORE_UTIL_H */
