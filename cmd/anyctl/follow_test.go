package main

import (
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anycastd/anycastd/api"
)

// TestApplyFollowsARolloutThatOthersOvertake: anyctl apply follows its
// rollout; when the cluster's document moves on before the rollout's end
// was seen, it says what it knows: another rollout began (the outcome of
// this one is unknown here), or a change made at once ended it.
func TestApplyFollowsARolloutThatOthersOvertake(t *testing.T) {
	defer func(d time.Duration) { rolloutPoll = d }(rolloutPoll)
	rolloutPoll = 10 * time.Millisecond
	file := filepath.Join(t.TempDir(), "services.yaml")
	os.WriteFile(file, []byte(`services:
  - name: dns
    vip: 192.0.2.2
    protocol: udp
    port: 53
    health: {type: none}
    backends: [{address: 10.9.9.9}]
`), 0o644)
	for _, c := range []struct {
		name  string
		later *api.RolloutView
		want  string
	}{
		{"another rollout began", &api.RolloutView{ID: 9, Stage: "standby"}, "another rollout (v9/"},
		{"a change made at once", nil, "ended by a change made at once"},
	} {
		t.Run(c.name, func(t *testing.T) {
			sock := filepath.Join(t.TempDir(), "api.sock")
			l, err := net.Listen("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			var posted atomic.Bool
			srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				resp := api.ConfigResponse{ConfigInfo: api.ConfigInfo{Version: 4, Hash: "aaaaaaaaaaaaaaaa"}}
				switch {
				case r.Method == http.MethodPost:
					posted.Store(true)
					resp.ConfigInfo = api.ConfigInfo{Version: 5, Hash: "bbbbbbbbbbbbbbbb"}
					resp.Rollout = &api.RolloutView{ID: 5, Stage: "standby", Hold: time.Second}
				case posted.Load():
					resp.ConfigInfo = api.ConfigInfo{Version: 9, Hash: "cccccccccccccccc", Author: "d2"}
					resp.Rollout = c.later
				}
				json.NewEncoder(w).Encode(resp)
			})}
			go srv.Serve(l)
			defer srv.Close()
			out, errOut, code := runCLI("apply", "-f", file, "--socket", sock, "--yes")
			if code != exitFailed || !strings.Contains(errOut, c.want) {
				t.Fatalf("exit %d, stderr %q (want %q)\n%s", code, errOut, c.want, out)
			}
		})
	}
}
