// SPDX-License-Identifier: MIT
/*
 * json.c - the text of the control socket's answers.  Strings are escaped as RFC 8259
 * wants; bytes that are not UTF-8 become U+FFFD so that the answer stays valid JSON.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static int reserve(struct klp_json *j, size_t more)
{
	size_t cap;
	char *p;

	if (j->failed)
		return -1;
	if (j->len + more + 1 <= j->cap)
		return 0;
	cap = j->cap ? j->cap : 256;
	while (cap < j->len + more + 1)
		cap *= 2;
	p = realloc(j->buf, cap);
	if (!p) {
		j->failed = 1;
		return -1;
	}
	j->buf = p;
	j->cap = cap;
	return 0;
}

static void put(struct klp_json *j, const char *s, size_t n)
{
	if (reserve(j, n))
		return;
	memcpy(j->buf + j->len, s, n);
	j->len += n;
	j->buf[j->len] = 0;
}

void klp_json_raw(struct klp_json *j, const char *s)
{
	put(j, s, strlen(s));
}

void klp_json_fmt(struct klp_json *j, const char *fmt, ...)
{
	char small[256];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(small, sizeof(small), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n < sizeof(small)) {
		put(j, small, n);
		return;
	}
	if (reserve(j, n))
		return;
	va_start(ap, fmt);
	vsnprintf(j->buf + j->len, n + 1, fmt, ap);
	va_end(ap);
	j->len += n;
}

/* The length of the UTF-8 sequence at s (1-4), or 0 if it is not one. */
static size_t utf8_len(const unsigned char *s)
{
	size_t n;
	unsigned int c;

	if (s[0] < 0x80)
		return 1;
	if (s[0] >= 0xc2 && s[0] <= 0xdf)
		n = 2;
	else if (s[0] >= 0xe0 && s[0] <= 0xef)
		n = 3;
	else if (s[0] >= 0xf0 && s[0] <= 0xf4)
		n = 4;
	else
		return 0;
	c = s[0] & (0x3f >> (n - 1));
	for (size_t i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		c = c << 6 | (s[i] & 0x3f);
	}
	if ((n == 3 && c < 0x800) || (n == 4 && (c < 0x10000 || c > 0x10ffff)) ||
	    (c >= 0xd800 && c <= 0xdfff))
		return 0;
	return n;
}

void klp_json_str(struct klp_json *j, const char *str)
{
	const unsigned char *s = (const unsigned char *)str;
	char esc[8];

	if (!s) {
		klp_json_raw(j, "null");
		return;
	}
	put(j, "\"", 1);
	while (*s) {
		size_t n = utf8_len(s);

		if (n == 0) {
			put(j, "\\ufffd", 6);
			s++;
		} else if (n > 1) {
			put(j, (const char *)s, n);
			s += n;
		} else if (*s == '"' || *s == '\\') {
			esc[0] = '\\';
			esc[1] = (char)*s++;
			put(j, esc, 2);
		} else if (*s < 0x20) {
			switch (*s) {
			case '\n': put(j, "\\n", 2); break;
			case '\t': put(j, "\\t", 2); break;
			case '\r': put(j, "\\r", 2); break;
			case '\b': put(j, "\\b", 2); break;
			case '\f': put(j, "\\f", 2); break;
			default:
				snprintf(esc, sizeof(esc), "\\u%04x", *s);
				put(j, esc, 6);
			}
			s++;
		} else {
			put(j, (const char *)s++, 1);
		}
	}
	put(j, "\"", 1);
}

void klp_json_free(struct klp_json *j)
{
	free(j->buf);
	*j = (struct klp_json){ 0 };
}
