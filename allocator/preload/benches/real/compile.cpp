// A C++ translation unit for the LD_PRELOAD suite's compile workload: the standard containers,
// algorithms and streams instantiated over a few types, so g++ (cc1plus) allocates heavily
// while parsing, instantiating and optimising.
#include <algorithm>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <numeric>
#include <set>
#include <sstream>
#include <string>
#include <unordered_map>
#include <variant>
#include <vector>

namespace suite {

template <typename K, typename V>
struct Table {
  std::map<K, std::vector<V>> rows;
  std::unordered_map<K, std::set<V>> index;

  void add(const K &k, const V &v) {
    rows[k].push_back(v);
    index[k].insert(v);
  }

  std::vector<V> sorted(const K &k) const {
    auto it = rows.find(k);
    if (it == rows.end()) return {};
    std::vector<V> out = it->second;
    std::sort(out.begin(), out.end());
    return out;
  }

  template <typename F>
  auto fold(F f) const {
    using R = decltype(f(std::declval<V>()));
    R acc{};
    for (const auto &[k, vs] : rows)
      for (const auto &v : vs) acc = acc + f(v);
    return acc;
  }
};

using Value = std::variant<long, double, std::string>;

std::string show(const Value &v) {
  return std::visit(
      [](const auto &x) {
        std::ostringstream s;
        s << x;
        return s.str();
      },
      v);
}

template <int N>
struct Unroll {
  static long run(const std::vector<long> &v) { return v[N % v.size()] + Unroll<N - 1>::run(v); }
};
template <>
struct Unroll<0> {
  static long run(const std::vector<long> &v) { return v.empty() ? 0 : v[0]; }
};

}  // namespace suite

int main() {
  suite::Table<std::string, long> a;
  suite::Table<long, std::string> b;
  suite::Table<int, double> c;
  suite::Table<std::string, std::string> d;
  for (long i = 0; i < 1000; i++) {
    a.add(std::to_string(i % 17), i);
    b.add(i % 13, std::to_string(i));
    c.add(int(i % 11), double(i) / 3);
    d.add(std::to_string(i % 7), std::string(i % 5, 'x'));
  }
  std::vector<suite::Value> values{1L, 2.5, std::string("three")};
  std::vector<std::string> shown;
  std::transform(values.begin(), values.end(), std::back_inserter(shown), suite::show);
  std::vector<long> v(100);
  std::iota(v.begin(), v.end(), 0);
  std::function<long(long)> sq = [](long x) { return x * x; };
  long total = a.fold(sq) + suite::Unroll<200>::run(v);
  total += long(c.fold([](double x) { return x; }));
  total += long(b.fold([](const std::string &s) { return s.size(); }));
  total += long(d.fold([](const std::string &s) { return s.size(); }));
  std::cout << total << ' ' << shown.size() << ' ' << a.sorted("3").size() << '\n';
  return 0;
}
