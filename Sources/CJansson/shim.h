#ifndef IPMASQ_CJANSSON_SHIM_H
#define IPMASQ_CJANSSON_SHIM_H
#include <jansson.h>

/* jansson's type accessor is a macro; Swift cannot import it. */
static inline json_type ipmasq_json_typeof(const json_t *json) { return json_typeof(json); }

#endif
