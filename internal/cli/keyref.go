package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/veil-tee/veil/seal"
)

// A keySource resolves key references of one kind, such as "file:PATH" or
// "kms:KEY", into the wrappers and unwrappers of the seal package.
type keySource interface {
	// wrapper returns a KeyWrapper for ref (the part after "kind:").
	wrapper(ctx context.Context, ref string) (seal.KeyWrapper, error)
	// unwrapper returns a KeyUnwrapper for ref.
	unwrapper(ctx context.Context, ref string) (seal.KeyUnwrapper, error)
	// auto returns an unwrapper that opens this kind's slots without a
	// --key flag (for example a key service configured by environment),
	// or nil if there is none.
	auto(ctx context.Context) (seal.KeyUnwrapper, error)
}

// keySources maps a key reference kind to its source.
func keySources() map[string]keySource {
	return map[string]keySource{"file": fileKeySource{}, "kms": kmsKeySource{}}
}

func splitKeyRef(ref string) (kind, rest string, src keySource, err error) {
	sources := keySources()
	kind, rest, ok := strings.Cut(ref, ":")
	if ok {
		src = sources[kind]
	}
	if !ok || src == nil || rest == "" {
		kinds := make([]string, 0, len(sources))
		for k := range sources {
			kinds = append(kinds, k+":…")
		}
		return "", "", nil, &Error{Err: fmt.Errorf("key %q: want KIND:REF, where KIND is one of %s", ref, strings.Join(sortedStrings(kinds), ", ")), Code: ExitUsage, Hint: "for a local key file use --key file:PATH (veil gen-key PATH makes one)"}
	}
	return kind, rest, src, nil
}

// resolveWrappers turns --key flags into key wrappers for sealing.
func resolveWrappers(ctx context.Context, refs []string) ([]seal.KeyWrapper, error) {
	if len(refs) == 0 {
		return nil, &Error{Err: errors.New("no key given"), Code: ExitUsage, Hint: "use --key file:PATH (veil gen-key PATH makes one); repeat --key to let several keys open the file"}
	}
	var ws []seal.KeyWrapper
	for _, ref := range refs {
		_, rest, src, err := splitKeyRef(ref)
		if err != nil {
			return nil, err
		}
		w, err := src.wrapper(ctx, rest)
		if err != nil {
			return nil, err
		}
		ws = append(ws, w)
	}
	return ws, nil
}

// resolveUnwrappers turns --key flags into an unwrapper; with no flags it
// uses every source that can work without one.
func resolveUnwrappers(ctx context.Context, refs []string) (seal.KeyUnwrapper, error) {
	var ks seal.Keys
	for _, ref := range refs {
		_, rest, src, err := splitKeyRef(ref)
		if err != nil {
			return nil, err
		}
		u, err := src.unwrapper(ctx, rest)
		if err != nil {
			return nil, err
		}
		ks = append(ks, u)
	}
	if len(refs) == 0 {
		sources := keySources()
		for _, kind := range sortedKeys(sources) {
			u, err := sources[kind].auto(ctx)
			if err != nil {
				return nil, err
			}
			if u != nil {
				ks = append(ks, u)
			}
		}
	}
	return ks, nil
}

type fileKeySource struct{}

func (fileKeySource) wrapper(_ context.Context, path string) (seal.KeyWrapper, error) {
	return loadFileKey(path)
}

func (fileKeySource) unwrapper(_ context.Context, path string) (seal.KeyUnwrapper, error) {
	return loadFileKey(path)
}

func (fileKeySource) auto(context.Context) (seal.KeyUnwrapper, error) { return nil, nil }

func loadFileKey(path string) (*seal.FileKey, error) {
	k, err := seal.LoadFileKey(path)
	if err != nil {
		return nil, withHint(err, "a wrap key is made by: veil gen-key "+path)
	}
	return k, nil
}
