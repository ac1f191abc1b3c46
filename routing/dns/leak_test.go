package dns

import (
	"testing"

	"go.uber.org/goleak"
)

// Every goroutine a test starts is gone when the tests end (CONVENTIONS:
// every goroutine has an owner that waits for it).
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
