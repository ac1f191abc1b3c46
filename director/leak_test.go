package director

import (
	"testing"

	"github.com/anycastd/anycastd/internal/leaktest"
	"go.uber.org/goleak"
)

// Every goroutine a test starts is gone when the tests end (CONVENTIONS:
// every goroutine has an owner that waits for it); memberlist's own are
// its business (leaktest.MemberlistInternals).
func TestMain(m *testing.M) { goleak.VerifyTestMain(m, leaktest.MemberlistInternals()...) }
