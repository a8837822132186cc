// Command kubetune-health reads FineTuneJobs (a JSON array, as `kubectl get -o json` items)
// and prints, for each, what the tools users run say about its health:
//
//   - kstatus: status.Compute from sigs.k8s.io/cli-utils (kpt, Config Sync, cli-utils' apply)
//   - fluxKstatus: status.Compute from github.com/fluxcd/cli-utils (Flux's kustomize-controller
//     and helm-controller health checks)
//   - argocd: the Argo CD health Lua, run by gopher-lua the way Argo CD's util/lua runs a
//     resource customization: only the package, base and table libraries and a safe os
//     (time, date), a one-second context, `obj` converted from the unstructured object,
//     the returned table JSON-encoded and checked against Argo CD's health codes.
//
// Usage: kubetune-health LUA_FILE < objects.json > results.json
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	flux "github.com/fluxcd/cli-utils/pkg/kstatus/status"
	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	luajson "layeh.com/gopher-json"
	upstream "sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

// Verdict is one tool's reading of one object.
type Verdict struct {
	Status  string `json:"status"`
	Message string `json:"message"`
	Error   string `json:"error,omitempty"`
}

// Result is every tool's reading of one object.
type Result struct {
	Name        string  `json:"name"`
	Kstatus     Verdict `json:"kstatus"`
	FluxKstatus Verdict `json:"fluxKstatus"`
	Argocd      Verdict `json:"argocd"`
}

// Argo CD's health codes (gitops-engine pkg/health); anything else reads as Unknown.
var argoHealth = map[string]bool{
	"Unknown": true, "Progressing": true, "Suspended": true,
	"Healthy": true, "Degraded": true, "Missing": true,
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: kubetune-health LUA_FILE < objects.json")
		os.Exit(2)
	}
	script, err := os.ReadFile(os.Args[1])
	check(err)
	raw, err := io.ReadAll(os.Stdin)
	check(err)
	var items []json.RawMessage
	check(json.Unmarshal(raw, &items))
	results := make([]Result, 0, len(items))
	for _, item := range items {
		// Unstructured's decoder keeps integers as int64, as the API client does: kstatus
		// reads metadata.generation with NestedInt64.
		u := &unstructured.Unstructured{}
		check(u.UnmarshalJSON(item))
		results = append(results, Result{
			Name:        u.GetName(),
			Kstatus:     kstatus(upstream.Compute(u)),
			FluxKstatus: fluxKstatus(flux.Compute(u)),
			Argocd:      argocd(u, string(script)),
		})
	}
	out := json.NewEncoder(os.Stdout)
	out.SetIndent("", "  ")
	check(out.Encode(results))
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "kubetune-health:", err)
		os.Exit(1)
	}
}

func kstatus(r *upstream.Result, err error) Verdict {
	if err != nil {
		return Verdict{Error: err.Error()}
	}
	return Verdict{Status: string(r.Status), Message: r.Message}
}

func fluxKstatus(r *flux.Result, err error) Verdict {
	if err != nil {
		return Verdict{Error: err.Error()}
	}
	return Verdict{Status: string(r.Status), Message: r.Message}
}

func argocd(u *unstructured.Unstructured, script string) Verdict {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.OsLibName, openSafeOs},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), NRet: 0, Protect: true},
			lua.LString(lib.name)); err != nil {
			return Verdict{Error: err.Error()}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", decodeValue(l, u.Object))
	if err := l.DoString(script); err != nil {
		return Verdict{Error: err.Error()}
	}
	ret := l.Get(-1)
	if ret.Type() == lua.LTNil {
		return Verdict{}
	}
	if ret.Type() != lua.LTTable {
		return Verdict{Error: "expect table output from Lua script, not " + ret.Type().String()}
	}
	encoded, err := luajson.Encode(ret)
	if err != nil {
		return Verdict{Error: err.Error()}
	}
	var v Verdict
	if err := json.Unmarshal(encoded, &v); err != nil {
		return Verdict{Error: err.Error()}
	}
	if !argoHealth[v.Status] {
		return Verdict{Status: "Unknown", Message: "Lua returned an invalid health status"}
	}
	return v
}

// openSafeOs is Argo CD's restricted os library: time and date only (no exit, files, env).
func openSafeOs(l *lua.LState) int {
	mod := l.RegisterModule(lua.OsLibName, map[string]lua.LGFunction{
		"time": func(l *lua.LState) int { l.Push(lua.LNumber(time.Now().Unix())); return 1 },
		"date": func(l *lua.LState) int { l.Push(lua.LString(time.Now().Format(time.RFC3339))); return 1 },
	})
	l.Push(mod)
	return 1
}

// decodeValue converts an unstructured value into Lua as Argo CD's util/lua does.
func decodeValue(l *lua.LState, value any) lua.LValue {
	switch v := value.(type) {
	case bool:
		return lua.LBool(v)
	case float64:
		return lua.LNumber(v)
	case string:
		return lua.LString(v)
	case json.Number:
		return lua.LString(v)
	case int:
		return lua.LNumber(v)
	case int32:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case []any:
		arr := l.CreateTable(len(v), 0)
		for _, item := range v {
			arr.Append(decodeValue(l, item))
		}
		return arr
	case map[string]any:
		tbl := l.CreateTable(0, len(v))
		for key, item := range v {
			tbl.RawSetH(lua.LString(key), decodeValue(l, item))
		}
		return tbl
	}
	return lua.LNil
}
