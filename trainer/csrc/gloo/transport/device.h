// Stands in for Gloo's header of this name: see decls.h.
#pragma once
#include "../decls.h"
