package vmlab

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/anycastd/anycastd/ipvs"
	"github.com/anycastd/anycastd/labs/labtest"
)

// The test binary doubles as the small programs the packet-path tests run
// inside namespaces (see labtest.HelperMain); "director" is this package's.
func TestMain(m *testing.M) {
	labtest.HelperMain(map[string]func([]string) error{"director": directorHelper, "listeners": listenersHelper, "monitor": monitorHelper})
	os.Exit(m.Run())
}

// directorHelper: director STATEFILE VIP... sets a director's host settings
// in the namespace it runs in.
func directorHelper(args []string) error {
	var vips []netip.Addr
	for _, v := range args[1:] {
		vips = append(vips, netip.MustParseAddr(v))
	}
	h, err := ipvs.OpenHost(args[0])
	if err != nil {
		return err
	}
	msgs, err := h.SetupDirector(ipvs.DirectorSettings{VIPs: vips})
	fmt.Println(strings.Join(msgs, "\n"))
	return err
}
