// SHA-256 — being written.
#pragma once
