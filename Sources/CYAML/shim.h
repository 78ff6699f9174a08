#ifndef IPMASQ_CYAML_SHIM_H
#define IPMASQ_CYAML_SHIM_H
#include <yaml.h>
#endif
