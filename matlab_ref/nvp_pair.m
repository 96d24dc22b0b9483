function p = nvp_pair(l, field)
% NVP_PAIR  [y x] stride / dilation / pool size of layer l (scalar or 2-vector field; default 1).
p = [1 1];
if isfield(l, field) && ~isempty(l.(field)), p = double(l.(field)(:)'); end
if numel(p) == 1, p = [p p]; end
end
